/* Copy to clipboard: a button with data-copy-target="<id of an input>" copies the input's value
   and reports in the element with data-copy-status="<same id>". Uses the Clipboard API where the
   page may (HTTPS or localhost), else selects the text and tries execCommand("copy"); if both
   fail the text stays selected for Ctrl+C. No dependencies. */
(function () {
  "use strict";

  function report(id, text) {
    var status = document.querySelector('[data-copy-status="' + id + '"]');
    if (status) status.textContent = text;
  }

  function fallback(input, id) {
    input.focus();
    input.select();
    input.setSelectionRange(0, input.value.length);
    var copied = false;
    try {
      copied = document.execCommand("copy");
    } catch (error) {
      copied = false;
    }
    report(id, copied ? "Copied." : "Selected: press Ctrl+C (⌘C on a Mac) to copy.");
  }

  document.addEventListener("click", function (event) {
    var button = event.target.closest("[data-copy-target]");
    if (!button) return;
    var id = button.getAttribute("data-copy-target");
    var input = document.getElementById(id);
    if (!input) return;
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(input.value).then(
        function () { report(id, "Copied."); },
        function () { fallback(input, id); }
      );
    } else {
      fallback(input, id);
    }
  });
})();
