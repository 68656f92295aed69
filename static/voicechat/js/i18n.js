// The page scripts' translations: gettext-style lookups in the catalog Django's
// JavaScriptCatalog (/jsi18n/, from locale/*/LC_MESSAGES/djangojs.po) defines as window.django.
// The page loads that classic script before its modules, so lookups work at module load too;
// without it (a page that skipped it) every string stays in English.

const catalog = globalThis.django;

/** Whether the page speaks English (the language of the server's own messages). */
export const speaksEnglish = (document.documentElement.lang || "en").startsWith("en");

/** The translation of `message` in the page's language. */
export function gettext(message) {
  return catalog ? catalog.gettext(message) : message;
}

/** `template` with each %(name)s replaced by values[name], as Django's interpolate(..., true). */
export function interpolate(template, values) {
  return template.replace(/%\((\w+)\)s/g, (_, name) => String(values[name]));
}
