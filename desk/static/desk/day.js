// The call list: a phone number is fetched (and audited) only when the desk asks for it.
document.addEventListener("submit", async (event) => {
  const form = event.target.closest("form[data-phone-form]");
  if (!form) return;
  event.preventDefault();
  const output = form.querySelector(".phone-number");
  const button = form.querySelector("button");
  button.disabled = true;
  try {
    const response = await fetch(form.action, {
      method: "POST",
      body: new FormData(form),
      headers: { "Accept": "application/json" },
      credentials: "same-origin",
    });
    if (!response.ok) throw new Error(String(response.status));
    const data = await response.json();
    output.textContent = data.phone;
    button.hidden = true;
  } catch (error) {
    output.textContent = form.dataset.error || "⚠";
    button.disabled = false;
  }
});
