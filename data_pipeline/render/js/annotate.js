// Mark every element with its vertical position and visibility, so the serialised DOM can be cut into tiles.
() => {
  const sy = window.scrollY;
  const range = document.createRange();
  // Where an element's content is drawn: the middle of its first line of text (a list item's box or a
  // paragraph's margin may start in the tile above its text), else the top of its box. Tiles take an
  // element by this y, as they take a text line by its middle.
  const lineOf = (node) => {  // a text node: the middle of its first drawn character, or null
    const m = /\S/.exec(node.nodeValue);
    if (!m) return null;
    range.setStart(node, m.index);
    range.setEnd(node, m.index + 1);
    const r = range.getClientRects()[0];
    return r && r.height > 0 ? (r.top + r.bottom) / 2 : null;
  };
  const firstLine = (el) => {
    const walker = document.createTreeWalker(el, NodeFilter.SHOW_TEXT);
    let node;
    while ((node = walker.nextNode())) {
      const y = lineOf(node);
      if (y !== null) return y;
    }
    return null;
  };
  // A container holding blocks and inline content between them: the y of each run of inline content
  // (the runs as the markdown converter cuts them: split by children whose tags are blocks).
  const BLOCKS = new Set(__BLOCK_NAMES__);
  const runsOf = (el) => {
    const runs = [];
    let open = false, y = null;
    for (const node of el.childNodes) {
      if (node.nodeType === 1 && BLOCKS.has(node.localName)) {
        if (open) runs.push(y === null ? -1 : Math.round(y + sy));
        open = false;
        y = null;
      } else if (node.nodeType === 1 || node.nodeType === 3) {
        open = true;
        if (y === null) y = node.nodeType === 1 ? firstLine(node) : lineOf(node);
      }
    }
    if (open) runs.push(y === null ? -1 : Math.round(y + sy));
    return runs;
  };
  for (const el of document.body.querySelectorAll('*')) {
    const r = el.getBoundingClientRect();
    const y = firstLine(el);
    el.setAttribute('data-lt-y', String(Math.round((y === null ? r.top : y) + sy)));
    const ok = el.checkVisibility ? el.checkVisibility({checkOpacity: true, checkVisibilityCSS: true}) : true;
    if (!ok) el.setAttribute('data-lt-hidden', '1');
    if ([...el.children].some((c) => BLOCKS.has(c.localName))) el.setAttribute('data-lt-runs', runsOf(el).join(','));
  }
  // Code blocks: where each of their lines starts and ends (a wrapped line spans several rows), so a block
  // cut by a tile gives each tile its lines. -1 for a line with nothing drawn (an empty line).
  for (const pre of document.body.querySelectorAll('pre')) {
    const spans = [];
    // the text the markdown takes: none of hidden elements or controls (as `_shown_text` there)
    const shown = (node) => {
      for (let el = node.parentElement; el && el !== pre.parentElement; el = el.parentElement) {
        // hidden elements were marked by the loop above
        if (el.localName === 'button' || el.localName === 'input' || el.hasAttribute('data-lt-hidden')) {
          return NodeFilter.FILTER_REJECT;
        }
      }
      return NodeFilter.FILTER_ACCEPT;
    };
    const walker = document.createTreeWalker(pre, NodeFilter.SHOW_TEXT, shown);
    let node, cur = [1e9, -1e9];
    while ((node = walker.nextNode())) {
      const t = node.nodeValue;
      let start = 0;
      while (start <= t.length) {
        const nl = t.indexOf('\n', start), end = nl < 0 ? t.length : nl;
        if (end > start) {
          range.setStart(node, start);
          range.setEnd(node, end);
          for (const r of range.getClientRects()) {
            if (r.height > 0) { cur[0] = Math.min(cur[0], r.top + sy); cur[1] = Math.max(cur[1], r.bottom + sy); }
          }
        }
        if (nl < 0) break;
        spans.push(cur[0] < 1e9 ? cur.map(Math.round).join(':') : '-1');
        cur = [1e9, -1e9];
        start = nl + 1;
      }
    }
    spans.push(cur[0] < 1e9 ? cur.map(Math.round).join(':') : '-1');
    pre.setAttribute('data-lt-lines', spans.join(','));
  }
  return document.documentElement.outerHTML;
}
