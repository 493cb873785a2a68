// Pictures: where the page draws images, graphics and embedded frames (text inside them is not the page's
// text, so labels leave it out and a reader of the labels knows where pictures are).
() => {
  const sx = window.scrollX, sy = window.scrollY, out = [];
  for (const el of document.body.querySelectorAll('img, svg, canvas, video, picture, iframe, object, embed')) {
    if (el.closest('svg') !== el && el.closest('svg')) continue;  // only outermost svg
    if (el.checkVisibility && !el.checkVisibility({checkOpacity: true, checkVisibilityCSS: true})) continue;
    const r = el.getBoundingClientRect();
    if (r.width >= 2 && r.height >= 2) out.push([r.left + sx, r.top + sy, r.right + sx, r.bottom + sy]);
  }
  return out;
}
