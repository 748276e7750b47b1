-- A gateway's registration is durable like an extension's (issue 15): the registrar
-- answers 200 only once the binding is stored, yet `bindings` belongs to extensions
-- (a row for a gateway's virtual number was refused, and lost at the next restart).
-- A gateway's bindings belong to the gateway: removing it removes them, and a change of
-- its number or credentials deletes them (see accounts' update_gateway); the running
-- server drops them too, by the generation derived from the gateway's credentials.
CREATE TABLE gateway_bindings (
    number TEXT NOT NULL REFERENCES gateways (number) ON DELETE CASCADE ON UPDATE CASCADE,
    contact TEXT NOT NULL,
    call_id TEXT NOT NULL,
    cseq BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    source TEXT NOT NULL,
    transport TEXT NOT NULL,
    generation BIGINT NOT NULL,
    PRIMARY KEY (number, contact)
);
