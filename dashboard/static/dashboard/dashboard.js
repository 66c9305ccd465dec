// The dashboard's only script: load the week ahead after the page (the planner's dry run takes
// seconds), and the print button. Without it the section links to its own page.
document.addEventListener("DOMContentLoaded", () => {
  const panel = document.getElementById("week-ahead-panel");
  if (panel) {
    fetch(panel.dataset.src, { credentials: "same-origin" })
      .then((response) => {
        if (!response.ok) throw new Error(String(response.status));
        return response.text();
      })
      .then((html) => { panel.innerHTML = html; panel.dataset.loaded = "1"; })
      .catch(() => { panel.dataset.loaded = "error"; });
  }
  const print = document.getElementById("print-report");
  if (print) print.addEventListener("click", () => window.print());
});
