// MathJax configuration for pymdownx.arithmatex (generic mode): \( \) and \[ \] inside class="arithmatex".
// MathJax itself (assets/mathjax/tex-chtml.js) is served by the site: docs/hooks.py.
window.MathJax = {
  // textmacros: macros inside \text{}, \texttt{} (e.g. \texttt{loss\_fn}) are read as TeX, not shown as typed.
  loader: { load: ["[tex]/textmacros"] },
  tex: {
    packages: { "[+]": ["textmacros"] },
    inlineMath: [["\\(", "\\)"]],
    displayMath: [["\\[", "\\]"]],
    processEscapes: true,
    processEnvironments: true
  },
  options: {
    ignoreHtmlClass: ".*|",
    processHtmlClass: "arithmatex"
  }
};

// MathJax typesets the page once it has loaded; this typesets again after Material swaps page content
// (instant navigation), and does nothing while MathJax is still loading.
document$.subscribe(() => {
  if (window.MathJax && MathJax.typesetPromise) {
    MathJax.typesetPromise()
  }
})
