// The language picker in the top bar (templates/language_picker.html): a choice applies at once.
// Django's set_language stores it in the language cookie and brings the user back to this page.
for (const form of document.querySelectorAll("[data-language-picker]")) {
  const select = form.querySelector("select");
  select.addEventListener("change", () => form.requestSubmit());
}
