// keymesh console: the only script, served from this origin (the CSP allows no other and no inline code).
// A dangerous action's submit button stays disabled until its confirmation field holds the exact name asked
// for. The server checks the same, so this is a convenience, not the safeguard.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  for (const input of document.querySelectorAll("input[data-confirm-match]")) {
    const button = input.form && input.form.querySelector("[data-confirm-button]");
    if (!button) continue;
    const expected = input.getAttribute("data-confirm-match");
    const update = () => { button.disabled = input.value !== expected; };
    input.addEventListener("input", update);
    update();
  }
});
