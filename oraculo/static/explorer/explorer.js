// The API explorer: Swagger UI on the document named by #explorer's data-spec-url.
// No validator badge (it would fetch from validator.swagger.io); requests other than GET carry
// the server's _xsrf cookie value, as Jupyter wants from a cookie-authenticated page.
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
      if (token && req.method && req.method.toUpperCase() !== "GET") {
        req.headers["X-XSRFToken"] = token;
      }
      return req;
    },
  });
})();
