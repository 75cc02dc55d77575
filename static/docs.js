// /docs: the Swagger UI of the API contract (a file, not an inline script).
window.addEventListener("DOMContentLoaded", () => {
  const el = document.getElementById("swagger-ui");
  if (!el || typeof SwaggerUIBundle === "undefined") return;
  SwaggerUIBundle({ url: el.dataset.openapi, dom_id: "#swagger-ui", deepLinking: true });
});
