"""A real SMTP server for the tests: aiosmtpd with STARTTLS required and AUTH required.

Usage: server.py HOST PORT CERT KEY USER PASSWORD MAILDIR
Prints "ready PORT" once listening. Every accepted message is written to MAILDIR as
one file (the raw message, with an X-Test-Envelope-To header first).
"""
import os
import socket
import ssl
import sys
import time

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

host, port, cert, key, user, password, maildir = sys.argv[1:8]
os.makedirs(maildir, exist_ok=True)
if port == "0":
    # aiosmtpd's Controller cannot bind port 0 (it connects to itself to check): pick one.
    with socket.socket() as s:
        s.bind((host, 0))
        port = str(s.getsockname()[1])


class Handler:
    count = 0

    async def handle_DATA(self, server, session, envelope):
        if session.ssl is None or not session.authenticated:
            return "530 STARTTLS and AUTH required"
        Handler.count += 1
        name = os.path.join(maildir, f"{time.time_ns()}-{Handler.count}.eml")
        with open(name + ".tmp", "wb") as f:
            f.write(b"X-Test-Envelope-To: " + ",".join(envelope.rcpt_tos).encode() + b"\r\n")
            f.write(envelope.original_content)
        os.rename(name + ".tmp", name)
        return "250 OK"


def authenticator(server, session, envelope, mechanism, auth_data):
    ok = (
        isinstance(auth_data, LoginPassword)
        and auth_data.login == user.encode()
        and auth_data.password == password.encode()
    )
    # handled=False: aiosmtpd answers a failed login with 535 itself.
    return AuthResult(success=ok, handled=False)


context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
context.load_cert_chain(cert, key)
controller = Controller(
    Handler(),
    hostname=host,
    port=int(port),
    tls_context=context,
    require_starttls=True,
    authenticator=authenticator,
    auth_required=True,
)
controller.start()
print(f"ready {port}", flush=True)
try:
    while True:
        time.sleep(3600)
except KeyboardInterrupt:
    pass
finally:
    controller.stop()
