// MathJax 3 configuration for pymdownx.arithmatex (generic mode). The MathJax component
// itself is copied into the site at build time (docs/scripts/mkdocs_hooks.py); when it is
// absent, the TeX source stays on the page, readable as is.
window.MathJax = {
  tex: {
    inlineMath: [["\\(", "\\)"]],
    displayMath: [["\\[", "\\]"]],
    processEscapes: true,
    processEnvironments: true,
  },
  svg: { fontCache: "global" },
  options: {
    ignoreHtmlClass: ".*|",
    processHtmlClass: "arithmatex",
  },
};

// Material re-renders page content without a reload on some navigations.
if (typeof document$ !== "undefined") {
  document$.subscribe(() => {
    const mj = window.MathJax;
    if (mj && mj.typesetPromise && mj.startup && mj.startup.output) {
      // The SVG output (used here) names its cache method clearFontCache; CHTML names it clearCache.
      const output = mj.startup.output;
      if (typeof output.clearFontCache === "function") output.clearFontCache();
      else if (typeof output.clearCache === "function") output.clearCache();
      mj.typesetClear();
      mj.texReset();
      mj.typesetPromise();
    }
  });
}
