/**
 * Stored text as it is shown: characters that would reorder the text around them on
 * screen (bidirectional controls) or hide in it (zero-width characters) are shown as
 * visible escapes, so that `evil\u202Etxt.exe` cannot pass for `evilexe.txt`.
 */
const HIDDEN = /[\u061C\u200B-\u200F\u202A-\u202E\u2060-\u2069\uFEFF]/g;

export function visible(text) {
  if (text === null || text === undefined) return text;
  return String(text).replace(HIDDEN, (c) => `⟨U+${c.codePointAt(0).toString(16).toUpperCase().padStart(4, '0')}⟩`);
}
