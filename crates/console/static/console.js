// The edit form's live check: as a password, PIN or SIP ID is typed, the server applies
// the same policy rules as the CLI and the field turns red with the reasons. No inline
// script (the Content-Security-Policy allows only this file).
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  const form = document.querySelector("form[data-check]");
  const meta = document.querySelector('meta[name="csrf-token"]');
  if (!form || !meta) return;
  let timer = null;
  const check = async () => {
    const body = new URLSearchParams(new FormData(form));
    const r = await fetch(form.dataset.check, {
      method: "POST",
      headers: { "X-CSRF-Token": meta.content },
      body,
      credentials: "same-origin",
    });
    if (!r.ok) return;
    const fields = (await r.json()).fields || {};
    for (const input of form.querySelectorAll("input[data-field]")) {
      const reasons = fields[input.dataset.field] || [];
      input.classList.toggle("weak", reasons.length > 0);
      input.setAttribute("aria-invalid", reasons.length > 0 ? "true" : "false");
      const why = document.getElementById("why-" + input.dataset.field);
      if (why) why.textContent = reasons.join("; ");
    }
  };
  form.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(check, 150);
  });
});
