// Vertical extents of the visible leaf blocks (paragraphs, list items, table rows, code, headings, figures)
// and of the runs of inline content that other containers hold (a <div> of text and <br>s, the text beside a
// list item's nested list): where a tile should not be cut. A run goes to the tile of its first line whole,
// as the markdown converter places it, so a cut through it would leave its other lines unlabelled.
() => {
  const sy = window.scrollY, out = [];
  const visible = (el) => !el.checkVisibility || el.checkVisibility({checkOpacity: true, checkVisibilityCSS: true});
  const sel = __LEAF_SELECTOR__;
  const leaves = new Set();
  for (const el of document.body.querySelectorAll(sel)) {
    // leaf blocks only: a definition or list item holding paragraphs spans them all and would leave no
    // place to cut between them
    if (el.querySelector(sel) || !visible(el)) continue;
    leaves.add(el);
    const r = el.getBoundingClientRect();
    if (r.height > 0) out.push([r.top + sy, r.bottom + sy]);
  }
  const BLOCKS = new Set(__BLOCK_NAMES__);
  const range = document.createRange();
  const push = (first, last) => {
    range.setStartBefore(first);
    range.setEndAfter(last);
    let top = Infinity, bottom = -Infinity;
    for (const r of range.getClientRects()) {
      if (r.height > 0 && r.width > 0) { top = Math.min(top, r.top); bottom = Math.max(bottom, r.bottom); }
    }
    if (bottom > top) out.push([top + sy, bottom + sy]);
  };
  // runs are what the converter cuts block containers' children into; a leaf block spans its own
  for (const el of [document.body, ...document.body.querySelectorAll(__BLOCK_SELECTOR__)]) {
    if (leaves.has(el) || el.closest('pre, svg, table') || !visible(el)) continue;
    let first = null, last = null, text = false;
    for (const node of [...el.childNodes, null]) {
      if (node && node.nodeType === 8) continue;  // a comment: not drawn, not a boundary
      const inline = node && (node.nodeType === 3 || (node.nodeType === 1 && !BLOCKS.has(node.localName)));
      if (inline) {
        if (first === null) first = node;
        last = node;
        text = text || node.nodeType === 1 || /\S/.test(node.nodeValue);
      } else {
        if (first !== null && text) push(first, last);
        first = last = null;
        text = false;
      }
    }
  }
  return out;
}
