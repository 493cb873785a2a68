// One round trip once the page has loaded: open every <details> (a collapsed block would show only its
// summary, so its content is drawn and labelled instead), drop images that did not load (Chromium would draw
// their alt text, which is no text of the page), wait for fonts and two frames (observers the page set up
// run, e.g. a sticky header that changes its height), freeze the page's observers (`FREEZE_JS`), then the
// height, words, blocks, pictures, layout.
async () => {
  for (const d of document.querySelectorAll('details')) d.open = true;
  for (const img of document.images) if (img.complete && img.naturalWidth === 0) img.style.display = 'none';
  if (document.fonts) await document.fonts.ready;
  for (let i = 0; i < 2; i++) await new Promise((done) => requestAnimationFrame(done));
  window.__literateFrozen = true;
  const full = Math.max(document.documentElement.scrollHeight, document.body ? document.body.scrollHeight : 0);
  return [full, (__EXTRACT_WORDS__)(), (__BLOCKS__)(), (__PICTURES__)(), (__LAYOUT__)()];
}
