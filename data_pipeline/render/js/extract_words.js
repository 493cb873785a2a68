// Every visible word of the page with its box in page coordinates, in DOM order, and whether it continues
// the previous word with no white space between (e.g. `foo<b>bar</b>`). Visible: not display:none, not
// visibility:hidden, not transparent (opacity or colour), not clipped away by an overflow ancestor.
() => {
  const sx = window.scrollX, sy = window.scrollY;
  const SKIP = new Set(['SCRIPT', 'STYLE', 'NOSCRIPT', 'TEMPLATE', 'TEXTAREA', 'OPTION', 'SELECT']);
  const vis = new Map(), clips = new Map(), boxes = new Map(), chromes = new Map();
  const INLINE = new Set(['inline', 'contents', 'inline-block', 'inline-flex', 'ruby', 'ruby-text']);
  // the block box a text node lives in: words of different boxes (table cells, columns) never share a line
  const boxOf = (el) => {
    if (boxes.has(el)) return boxes.get(el);
    const id = el.parentElement && INLINE.has(getComputedStyle(el).display) ? boxOf(el.parentElement) : boxes.size + 1;
    boxes.set(el, id);
    return id;
  };
  // navigation, page footers and asides: visible (so in layout) but not content (so not in markdown)
  const chromeOf = (el) => {
    if (chromes.has(el)) return chromes.get(el);
    const c = el.closest('nav, footer, aside, [role=navigation], [role=contentinfo], [role=search], [role=banner], [role=complementary]') ? 1 : 0;
    chromes.set(el, c);
    return c;
  };
  const visible = (el) => {
    if (vis.has(el)) return vis.get(el);
    let ok = el.checkVisibility ? el.checkVisibility({checkOpacity: true, checkVisibilityCSS: true}) : true;
    if (ok) {
      const cs = getComputedStyle(el);
      const m = cs.color.match(/rgba?\(([^)]*)\)/);
      if (m && m[1].split(',').length === 4 && parseFloat(m[1].split(',')[3]) === 0) ok = false;
      if (parseFloat(cs.fontSize) < 2) ok = false;
    }
    vis.set(el, ok);
    return ok;
  };
  const clipOf = (el) => {
    // the page itself clips at the captured width: what overflows to the right is not in any tile
    if (!el || el === document.body || el === document.documentElement) return [-1e9, -1e9, window.innerWidth + sx, 1e9];
    if (clips.has(el)) return clips.get(el);
    let r = clipOf(el.parentElement);
    const cs = getComputedStyle(el);
    if (cs.overflowX !== 'visible' || cs.overflowY !== 'visible') {
      const b = el.getBoundingClientRect();
      r = [Math.max(r[0], b.left + sx), Math.max(r[1], b.top + sy), Math.min(r[2], b.right + sx), Math.min(r[3], b.bottom + sy)];
    }
    clips.set(el, r);
    return r;
  };
  const out = [];
  const range = document.createRange();
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  let prevSpace = true, node;
  while ((node = walker.nextNode())) {
    const el = node.parentElement, text = node.nodeValue;
    if (!el || SKIP.has(el.tagName) || !text || !visible(el)) continue;
    const clip = clipOf(el), box = boxOf(el), chrome = chromeOf(el), re = /\S+/g;
    const push = (t, r, join) => {
      const x0 = Math.max(r.left + sx, clip[0]), y0 = Math.max(r.top + sy, clip[1]);
      const x1 = Math.min(r.right + sx, clip[2]), y1 = Math.min(r.bottom + sy, clip[3]);
      // mostly clipped away (less than half its height or width showing): not visible text
      if (x1 - x0 < 0.5 * r.width || y1 - y0 < 0.5 * r.height || x1 - x0 < 0.5 || y1 - y0 < 0.5) return false;
      out.push([t, x0, y0, x1, y1, join ? 1 : 0, box, chrome]);
      return true;
    };
    // A text node on one line is one item (fast); a node that wraps is measured word by word.
    range.selectNodeContents(node);
    const whole = range.getClientRects();
    const inClip = (r) => r.left + sx >= clip[0] && r.top + sy >= clip[1] && r.right + sx <= clip[2] && r.bottom + sy <= clip[3];
    if (whole.length === 1 && /\S/.test(text) && inClip(whole[0])) {
      push(text.trim().split(/\s+/).join(' '), whole[0], /^\S/.test(text) && !prevSpace);
      prevSpace = /\s$/.test(text);
      continue;
    }
    let m, first = true;
    while ((m = re.exec(text))) {
      range.setStart(node, m.index);
      range.setEnd(node, m.index + m[0].length);
      const join = first && m.index === 0 && !prevSpace;
      for (const r of range.getClientRects()) {
        if (push(m[0], r, join)) break;  // a word is one box: its first visible line fragment
      }
      first = false;
    }
    prevSpace = /\s$/.test(text);
  }
  return out;
}
