// Swagger UI for /docs, from the vendored bundle: an external file, since the page's policy allows no inline script.
// vendor/swagger-ui-bundle.js and swagger-ui.css: swagger-ui-dist 5.35.0 from npm, unmodified (Apache-2.0:
// vendor/LICENSE-swagger-ui, NOTICE-swagger-ui; bundled third-party notices: swagger-ui-bundle.js.LICENSE.txt).
"use strict";
const root = document.getElementById("swagger-ui");
window.ui = SwaggerUIBundle({
  url: root.dataset.openapiUrl, dom_id: "#swagger-ui", layout: "BaseLayout", deepLinking: true,
  showExtensions: true, showCommonExtensions: true, validatorUrl: null, presets: [SwaggerUIBundle.presets.apis],
});
