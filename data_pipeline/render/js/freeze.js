// Installed before a page's own scripts: once the page is measured (`window.__literateFrozen`), the observers
// and resize/scroll listeners it set up are no longer called, so a capture (which lets Chromium lay the page
// out taller than the window for a moment) does not make it move, e.g. pin a sticky header that then changes
// its height.
(() => {
  const frozen = () => window.__literateFrozen === true;
  for (const name of ['IntersectionObserver', 'ResizeObserver']) {
    const Original = window[name];
    if (!Original) continue;
    window[name] = class extends Original {
      constructor(callback, options) {
        super((...args) => { if (!frozen()) callback(...args); }, options);
      }
    };
  }
  const add = EventTarget.prototype.addEventListener, remove = EventTarget.prototype.removeEventListener;
  const wrapped = new WeakMap();
  const watched = (target, type, listener) =>
    (type === 'resize' || type === 'scroll') && (target === window || target === document) && listener;
  EventTarget.prototype.addEventListener = function (type, listener, options) {
    if (watched(this, type, listener)) {
      if (!wrapped.has(listener)) {
        wrapped.set(listener, function (...args) {
          if (frozen()) return;
          return typeof listener === 'function' ? listener.apply(this, args) : listener.handleEvent(...args);
        });
      }
      return add.call(this, type, wrapped.get(listener), options);
    }
    return add.call(this, type, listener, options);
  };
  EventTarget.prototype.removeEventListener = function (type, listener, options) {
    const inner = watched(this, type, listener) && wrapped.get(listener);
    return remove.call(this, type, inner || listener, options);
  };
})();
