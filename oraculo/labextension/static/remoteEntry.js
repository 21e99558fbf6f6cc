/*
 * Oráculo's JupyterLab extension, written as a module-federation container by hand (no build
 * step): JupyterLab loads this script, calls init() with its share scope and get("./extension")
 * for the plugins (see jupyterlab/staging/bootstrap.js and index.out.js).
 *
 * The plugin listens to the server's event bus (/api/events/subscribe, through JupyterLab's
 * EventManager) for Oráculo's insert-cell events and puts the code into the open notebook they
 * name, as a new cell below the active cell or in place of it. It needs no JupyterLab module,
 * only the application object: the notebook's shared model does the edit, in the editor, so the
 * user reviews and runs it, and nothing rewrites the .ipynb under the editor.
 */
(function () {
  "use strict";
  var NAME = "@oraculo/lab";
  var SCHEMA = "https://oraculo.dev/events/chat/insert-cell";
  var SEEN = "oraculo-inserted:";

  function notebookAt(app, path) {
    var found = null;
    var widgets = app.shell.widgets("main");
    for (var w of widgets) {
      if (w && w.context && w.context.path === path && w.content && w.content.model) {
        found = w;
      }
    }
    return found;
  }

  function firstTime(id) {
    // Two tabs of the same user may show the notebook: one of them inserts.
    try {
      if (window.localStorage.getItem(SEEN + id)) {
        return false;
      }
      window.localStorage.setItem(SEEN + id, String(Date.now()));
    } catch (e) {
      /* storage refused: insert anyway */
    }
    return true;
  }

  function insert(app, event) {
    var panel = notebookAt(app, event.path);
    if (!panel || !firstTime(event.id)) {
      return;
    }
    var notebook = panel.content;
    var shared = notebook.model.sharedModel;
    var index = Math.max(notebook.activeCellIndex, 0);
    if (event.mode === "replace" && notebook.activeCell) {
      notebook.activeCell.model.sharedModel.setSource(event.code);
    } else {
      var at = shared.cells.length ? index + 1 : 0;
      shared.insertCell(at, {
        cell_type: "code",
        source: event.code,
        metadata: { oraculo: { inserted_from: event.origin || "chat" } }
      });
      notebook.activeCellIndex = at;
    }
    app.shell.activateById(panel.id);
    document.body.setAttribute("data-oraculo-inserted", event.id);
  }

  // The launcher's "Oráculo" section: jupyter-server-proxy's tiles there get their icons
  // (JupyterLab draws an entry's icon only in the kernel sections).
  function launcherIcons(app) {
    var settings = app.serviceManager.serverSettings;
    var base = (settings.baseUrl || "/").replace(/\/?$/, "/");
    // As JupyterLab's own requests: the XSRF token with the cookie (JupyterHub refuses a
    // cookie-only script request), and the page's token where it has one.
    var xsrf = (document.cookie.match(/(?:^|; )_xsrf=([^;]*)/) || [])[1];
    var headers = {};
    if (xsrf) { headers["X-XSRFToken"] = decodeURIComponent(xsrf); }
    if (settings.token) { headers.Authorization = "token " + settings.token; }
    fetch(base + "server-proxy/servers-info", { credentials: "same-origin", headers: headers })
      .then(function (r) { return r.ok ? r.json() : { server_processes: [] }; })
      .then(function (info) {
        var rules = [];
        (info.server_processes || []).forEach(function (p) {
          var e = p.launcher_entry || {};
          if (e.category !== "Oráculo" || !e.icon_url || !e.enabled) { return; }
          var title = String(e.title).replace(/["\\]/g, "");
          // a tile that opens a new browser tab is titled with " [↗]" after its title
          var card = '.jp-LauncherCard[data-category="Oráculo"][title="' + title;
          rules.push(
            card + '"] .jp-LauncherCard-icon, ' + card + ' [↗]"] .jp-LauncherCard-icon ' +
            "{ background: url(\"" + encodeURI(e.icon_url) + "\") " +
            "center / 52px 52px no-repeat; }"
          );
        });
        if (rules.length) {
          var style = document.createElement("style");
          style.setAttribute("data-oraculo", "launcher-icons");
          style.textContent = rules.join("\n");
          document.head.appendChild(style);
        }
      })
      .catch(function () { /* no jupyter-server-proxy: no tiles to dress */ });
  }

  var plugin = {
    id: "@oraculo/lab:insert-cell",
    description: "Inserts code from Oráculo's chat into the open notebook it names.",
    autoStart: true,
    requires: [],
    activate: function (app) {
      launcherIcons(app);
      var events = app.serviceManager && app.serviceManager.events;
      if (!events) {
        console.warn("Oráculo: this JupyterLab has no event stream; chat cannot insert cells");
        return;
      }
      events.stream.connect(function (_, event) {
        if (event && event.schema_id === SCHEMA) {
          try {
            insert(app, event);
          } catch (e) {
            console.error("Oráculo: could not insert the cell", e);
          }
        }
      });
    }
  };

  var container = {
    init: function () {
      return Promise.resolve();
    },
    get: function (module) {
      if (module !== "./extension") {
        return Promise.reject(new Error(NAME + " has no module " + module));
      }
      return Promise.resolve(function () {
        return { __esModule: true, default: [plugin] };
      });
    }
  };
  window._JUPYTERLAB = window._JUPYTERLAB || {};
  window._JUPYTERLAB[NAME] = container;
})();
