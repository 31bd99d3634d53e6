// The manager pages work without this file; it only asks before a form that cannot be undone
// and copies a token. No inline script: the pages' Content-Security-Policy allows none.
"use strict";
document.addEventListener("submit", (ev) => {
  const form = ev.target;
  const question = form instanceof HTMLFormElement ? form.dataset.confirm : undefined;
  if (question && !window.confirm(question)) ev.preventDefault();
});
document.addEventListener("click", (ev) => {
  const button = ev.target instanceof Element ? ev.target.closest("[data-copy]") : null;
  if (!button) return;
  const source = document.querySelector(button.dataset.copy);
  if (source && navigator.clipboard) navigator.clipboard.writeText(source.textContent.trim());
});
