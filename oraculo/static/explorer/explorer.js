// The API explorer: Swagger UI on the document named by #explorer's data-spec-url.
// No validator badge (it would fetch from validator.swagger.io). Every request, the document's
// included, carries the server's _xsrf cookie value: JupyterHub's single-user servers accept a
// sign-in cookie on a script's request (GET too) only with it.
(function () {
  "use strict";
  var el = document.getElementById("explorer");
  function xsrf() {
    var m = document.cookie.match(/(?:^|;\s*)_xsrf=([^;]+)/);
    return m ? decodeURIComponent(m[1]) : "";
  }
  window.ui = SwaggerUIBundle({
    url: el.dataset.specUrl,
    domNode: el,
    validatorUrl: null,
    deepLinking: true,
    requestInterceptor: function (req) {
      var token = xsrf();
      if (token) {
        req.headers["X-XSRFToken"] = token;
      }
      return req;
    },
  });
})();
