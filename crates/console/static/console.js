// The console's one script (the Content-Security-Policy allows no other and nothing
// inline): times read as "3 min ago" with the exact local time on hover, and the edit
// form's live check.
"use strict";

// <time datetime="ISO"> from the server: relative words, the exact local time as its
// title. Without this script the UTC time the server wrote stays.
const ago = (date, now) => {
  const s = Math.round((now - date) / 1000);
  const a = Math.abs(s);
  const say = (n, unit) => {
    const v = Math.floor(n);
    const words = `${v} ${unit}${v === 1 || unit === "min" ? "" : "s"}`;
    return s >= 0 ? `${words} ago` : `in ${words}`;
  };
  if (a < 45) return s >= 0 ? "just now" : "in a moment";
  if (a < 3600) return say(Math.max(1, a / 60), "min");
  if (a < 86400) return say(a / 3600, "hour");
  if (a < 86400 * 45) return say(a / 86400, "day");
  return date.toLocaleDateString();
};
const upgradeTimes = () => {
  const now = Date.now();
  for (const t of document.querySelectorAll("time[datetime]")) {
    const date = new Date(t.getAttribute("datetime"));
    if (Number.isNaN(date.getTime())) continue;
    t.title = date.toLocaleString();
    t.textContent = ago(date, now);
  }
};

// The edit form's live check: as a password, PIN or SIP ID is typed, the server applies
// the same policy rules as the CLI and the field turns red with the reasons.
const liveCheck = () => {
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
      if (why) why.textContent = reasons.length ? "⚠ " + reasons.join("; ") : "";
    }
  };
  form.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(check, 150);
  });
};

document.addEventListener("DOMContentLoaded", () => {
  upgradeTimes();
  setInterval(upgradeTimes, 60000);
  liveCheck();
});
