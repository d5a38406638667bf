// The storefront: plain JavaScript against the gateway's HTTP/JSON API (same origin).
// Every call sends the pasted token; errors are google.rpc.Status bodies, read for their
// details (ErrorInfo reason, RetryInfo delay) rather than shown raw. Data is put into the page
// with textContent only, never as HTML.
"use strict";

(() => {
  // The API takes the price from the client; this is the shop's price list.
  const PHONES = [
    { item: "Galaxy S25", unitPrice: 1250000 },
    { item: "iPhone 16", unitPrice: 1350000 },
    { item: "Pixel 9", unitPrice: 1090000 },
    { item: "Galaxy Z Flip6", unitPrice: 1480000 },
  ];
  const POLL_MS = 1000;
  // How long a cancel is retried as RetryInfo asks before the page gives up and says so.
  const CANCEL_RETRY_LIMIT_MS = 120000;
  const TOKEN_KEY = "phoneseller.token";

  // What each event of the customer view means in the order's life (its timeline).
  const STEPS = {
    Ordered: "ORDERED",
    PayCompleted: "PAID",
    PayDeclined: "PAYMENT DECLINED",
    PromoCompleted: "POINTS GRANTED",
    Shipped: "SHIPPED",
    PromoCancelled: "POINTS CLAWED BACK",
    PayCancelled: "PAYMENT REFUNDED",
    OrderCancelled: "CANCELLED",
  };
  const STATUS_WORDS = {
    ORDER_STATUS_ORDERED: "ordered",
    ORDER_STATUS_PAID: "paid",
    ORDER_STATUS_PAYMENT_DECLINED: "payment declined",
    ORDER_STATUS_SHIPPED: "shipped",
    ORDER_STATUS_CANCELLED: "cancelled",
    STORE_ORDER_STATUS_RECEIVED: "waiting to ship",
    STORE_ORDER_STATUS_SHIPPED: "shipped",
    STORE_ORDER_STATUS_CANCELLED: "cancelled",
  };

  const $ = (id) => document.getElementById(id);
  const won = (n) => `${Number(n).toLocaleString("en-US")} won`;
  const points = (n) => `${Number(n).toLocaleString("en-US")} points`;

  const state = {
    token: null,
    user: null, // { sub, roles, exp }
    orders: new Map(), // order_id -> what the last call returned, until the view has it
    notices: new Map(), // order_id -> a message shown on that order
    cancelling: new Set(),
    timer: null,
  };

  // ------------------------------------------------------------------------------------
  // Tokens

  function decodePart(part) {
    const b64 = part.replace(/-/g, "+").replace(/_/g, "/");
    const padded = b64 + "=".repeat((4 - (b64.length % 4)) % 4);
    const bytes = Uint8Array.from(atob(padded), (c) => c.charCodeAt(0));
    return JSON.parse(new TextDecoder().decode(bytes));
  }

  // Reads (does not verify) the token's claims: the gateway verifies it on every call.
  function claimsOf(token) {
    const parts = token.split(".");
    if (parts.length !== 3) throw new Error("that is not a token: a JWT has three parts");
    let claims;
    try {
      claims = decodePart(parts[1]);
    } catch (e) {
      throw new Error("that is not a token: its middle part is not base64url JSON");
    }
    if (!claims.sub || !Array.isArray(claims.roles)) {
      throw new Error("the token has no subject or roles: make one with `phoneseller token`");
    }
    if (typeof claims.exp === "number" && claims.exp * 1000 < Date.now()) {
      throw new Error("the token has expired: make a new one with `phoneseller token`");
    }
    return { sub: String(claims.sub), roles: claims.roles.map(String), exp: claims.exp };
  }

  // ------------------------------------------------------------------------------------
  // The API

  class ApiError extends Error {
    constructor(httpStatus, status) {
      super(status.message || `HTTP ${httpStatus}`);
      this.httpStatus = httpStatus;
      this.code = status.code;
      this.reason = "";
      this.retryAfterSeconds = null;
      this.fields = [];
      for (const detail of status.details || []) {
        const type = String(detail["@type"] || "");
        if (type.endsWith("google.rpc.ErrorInfo")) this.reason = detail.reason || "";
        if (type.endsWith("google.rpc.RetryInfo")) {
          const delay = detail.retry_delay ?? detail.retryDelay ?? "1s";
          this.retryAfterSeconds = parseFloat(String(delay)) || 1;
        }
        if (type.endsWith("google.rpc.BadRequest")) {
          for (const v of detail.field_violations || detail.fieldViolations || []) {
            this.fields.push(`${v.field}: ${v.description}`);
          }
        }
      }
    }
  }

  function newRequestId() {
    const bytes = crypto.getRandomValues(new Uint8Array(16));
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  async function call(method, path, body) {
    const headers = { Authorization: `Bearer ${state.token}` };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let response;
    try {
      response = await fetch(path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        cache: "no-store",
      });
    } catch (e) {
      throw new ApiError(0, { code: 14, message: "the gateway cannot be reached" });
    }
    let parsed = {};
    try {
      parsed = await response.json();
    } catch (e) {
      parsed = { code: 2, message: `HTTP ${response.status} without a JSON body` };
    }
    if (!response.ok) throw new ApiError(response.status, parsed);
    return parsed;
  }

  const api = {
    history: (id) => call("GET", `/v1/customers/${encodeURIComponent(id)}/history`),
    balance: (id) => call("GET", `/v1/customers/${encodeURIComponent(id)}/points`),
    place: (body) => call("POST", "/v1/orders", body),
    cancel: (id, requestId) =>
      call("POST", `/v1/orders/${encodeURIComponent(id)}:cancel`, { request_id: requestId }),
    storeOrders: (status) => {
      const query = new URLSearchParams({ page_size: "100" });
      if (status) query.set("status", status);
      return call("GET", `/v1/storeOrders?${query}`);
    },
    ship: (id) =>
      call("POST", `/v1/storeOrders/${encodeURIComponent(id)}:ship`, {
        request_id: newRequestId(),
      }),
  };

  // What to tell the user about an error, in words; null = nothing special to say.
  function explain(error) {
    if (!(error instanceof ApiError)) return String(error.message || error);
    if (error.code === 16) {
      return "Your token is missing, expired or not from this shop's issuer. Paste a new one " +
        "(phoneseller token --customer alice).";
    }
    if (error.code === 7) return `This token may not do that (${error.reason || "denied"}).`;
    if (error.fields.length) return `Please check: ${error.fields.join("; ")}.`;
    if (error.retryAfterSeconds !== null) {
      return `The shop is busy right now (${error.reason || "unavailable"}); try again in ` +
        `${error.retryAfterSeconds} s.`;
    }
    return error.message;
  }

  function showProblem(text) {
    $("problem").textContent = text || "";
  }
  function showNotice(text) {
    $("notice").textContent = text || "";
  }

  // ------------------------------------------------------------------------------------
  // Signing in and out

  function signIn(token) {
    const user = claimsOf(token);
    state.token = token;
    state.user = user;
    sessionStorage.setItem(TOKEN_KEY, token);
    const role = user.roles.includes("customer") ? "customer"
      : user.roles.includes("dealer") ? "dealer" : user.roles[0] || "no role";
    $("who").textContent = `Signed in as ${user.sub} (${role}).`;
    $("sign-in").hidden = true;
    $("sign-out").hidden = false;
    $("customer").hidden = role !== "customer";
    $("dealer").hidden = role !== "dealer";
    showProblem("");
    showNotice(role === "customer" || role === "dealer" ? "" :
      "This page has views for customers and dealers; an operator's token reads the API only.");
    if (role === "customer") {
      refreshCustomer();
      state.timer = setInterval(refreshCustomer, POLL_MS);
    } else if (role === "dealer") {
      refreshStore();
    }
  }

  function signOut() {
    clearInterval(state.timer);
    state.timer = null;
    state.token = null;
    state.user = null;
    state.orders.clear();
    state.notices.clear();
    lastDrawn = "";
    sessionStorage.removeItem(TOKEN_KEY);
    $("who").textContent = "Not signed in.";
    $("sign-in").hidden = false;
    $("sign-out").hidden = true;
    $("customer").hidden = true;
    $("dealer").hidden = true;
    $("token").value = "";
    $("orders").replaceChildren();
    $("store-orders").tBodies[0].replaceChildren();
    showProblem("");
    showNotice("");
    $("token").focus();
  }

  // ------------------------------------------------------------------------------------
  // The customer's view

  let refreshing = false;
  async function refreshCustomer() {
    if (refreshing || !state.user) return;
    refreshing = true;
    const customer = state.user.sub;
    try {
      // Each answer on its own: with promotion down the history still shows, and the balance
      // falls back to the view's.
      const [history, balance] = await Promise.allSettled([
        api.history(customer),
        api.balance(customer),
      ]);
      if (!state.user || state.user.sub !== customer) return;
      if (balance.status === "fulfilled") {
        $("balance").textContent = points(balance.value.balance ?? 0);
        $("balance-note").textContent = "";
      } else if (history.status === "fulfilled") {
        $("balance").textContent = points(history.value.point_balance ?? 0);
        $("balance-note").textContent =
          "(as your order history has it: the points system is not answering right now)";
      }
      if (history.status === "fulfilled") {
        renderOrders(history.value.orders || []);
        $("sync").textContent = `Updated ${new Date().toLocaleTimeString()}.`;
      } else {
        $("sync").textContent = `Cannot refresh the orders: ${explain(history.reason)}`;
      }
    } finally {
      refreshing = false;
    }
  }

  function renderOrders(seen) {
    const byId = new Map(seen.map((o) => [o.order_id, o]));
    // An order just placed may not be in the (eventually consistent) view yet.
    for (const [id, order] of state.orders) {
      if (byId.has(id)) state.orders.delete(id);
    }
    const newest = [...state.orders.values()].map(fromOrder).concat(seen);
    // Redraw only what changed: a redraw every poll would take the keyboard focus away.
    const drawn = JSON.stringify([newest, [...state.notices], [...state.cancelling]]);
    if (drawn === lastDrawn) return;
    lastDrawn = drawn;
    $("no-orders").hidden = newest.length > 0;
    const focused = document.activeElement && document.activeElement.dataset.focusKey;
    $("orders").replaceChildren(...newest.map(renderOrder));
    if (focused) {
      const again = document.querySelector(`[data-focus-key="${CSS.escape(focused)}"]`);
      if (again) again.focus();
    }
  }
  let lastDrawn = "";

  // A PlaceOrder result in the shape of the view's OrderHistory.
  function fromOrder(order) {
    return {
      order_id: order.order_id,
      item: order.item,
      quantity: order.quantity,
      amount: order.amount,
      status: order.status,
      points_granted: order.payback_points,
      points_reversed: "0",
      timeline: [],
    };
  }

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (k === "className") node.className = v;
      else node.setAttribute(k, v);
    }
    for (const child of children) {
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function renderOrder(order) {
    const id = order.order_id;
    const status = order.status || "ORDER_STATUS_ORDERED";
    const item = el("li", { className: "order", "data-order-id": id });
    const title = `${order.quantity} × ${order.item}`;
    item.append(el("h3", {}, title));
    item.append(
      el("p", { className: "facts" },
        `${won(order.amount)} · `,
        el("span", { className: `status ${status}`, "data-role": "status" },
          STATUS_WORDS[status] || status),
        " · ",
        el("span", { "data-role": "points" },
          `${points(order.points_granted || 0)} granted` +
          (Number(order.points_reversed || 0) ? `, ${points(order.points_reversed)} clawed back`
            : "")),
        ` · order ${id}`),
    );
    const steps = el("ol", { className: "timeline", "aria-label": `Timeline of ${title}` });
    for (const entry of order.timeline || []) {
      const when = entry.occurred_at ? new Date(entry.occurred_at) : null;
      steps.append(
        el("li", { "data-event": entry.event_type },
          el("span", { className: "step" }, STEPS[entry.event_type] || entry.event_type),
          ` — ${entry.description} `,
          when ? el("time", { datetime: entry.occurred_at }, when.toLocaleTimeString()) : ""),
      );
    }
    item.append(steps);
    const notice = state.notices.get(id);
    if (notice) item.append(el("p", { className: "order-notice", role: "status" }, notice));
    const cancellable = status === "ORDER_STATUS_PAID" || status === "ORDER_STATUS_ORDERED";
    if (cancellable) {
      const button = el("button", { type: "button", className: "secondary cancel",
        "aria-label": `Cancel order ${title} (${id})` }, "Cancel order");
      button.disabled = state.cancelling.has(id);
      button.dataset.focusKey = `cancel:${id}`;
      button.addEventListener("click", () => cancelOrder(id));
      item.append(button);
    }
    return item;
  }

  async function placeOrder(event) {
    event.preventDefault();
    const phone = PHONES[Number($("phone").value)];
    const quantity = Number($("quantity").value);
    if (!Number.isInteger(quantity) || quantity < 1 || quantity > 100) {
      showProblem("Please choose a quantity from 1 to 100.");
      $("quantity").focus();
      return;
    }
    const button = $("place-order");
    button.disabled = true;
    showProblem("");
    try {
      const order = await api.place({
        customer_id: state.user.sub,
        item: phone.item,
        quantity,
        unit_price: String(phone.unitPrice),
        request_id: newRequestId(),
      });
      state.orders.set(order.order_id, order);
      const words = STATUS_WORDS[order.status] || order.status;
      showNotice(`Order placed: ${quantity} × ${phone.item}, ${words}.`);
      refreshCustomer();
    } catch (error) {
      showProblem(explain(error));
    } finally {
      button.disabled = false;
    }
  }

  // Cancels, and while the points system is down (UNAVAILABLE with RetryInfo) says the cancel
  // will work shortly and tries again after the delay it asks for, with the same request_id.
  async function cancelOrder(id) {
    if (state.cancelling.has(id)) return;
    state.cancelling.add(id);
    const requestId = newRequestId();
    const started = Date.now();
    showProblem("");
    try {
      for (;;) {
        try {
          await api.cancel(id, requestId);
          state.notices.delete(id);
          showNotice("Order cancelled; its points are clawed back.");
          return;
        } catch (error) {
          const waited = Date.now() - started;
          if (!(error instanceof ApiError) || error.retryAfterSeconds === null ||
              waited > CANCEL_RETRY_LIMIT_MS) {
            state.notices.delete(id);
            showProblem(explain(error));
            return;
          }
          const seconds = Math.max(error.retryAfterSeconds, 1);
          state.notices.set(id, "The points system is not answering right now, so the " +
            `cancel will work shortly: trying again every ${seconds} s. Nothing was changed yet.`);
          refreshCustomer();
          await new Promise((resolve) => setTimeout(resolve, seconds * 1000));
          if (!state.user) return;
        }
      }
    } finally {
      state.cancelling.delete(id);
      refreshCustomer();
    }
  }

  // ------------------------------------------------------------------------------------
  // The dealer's view

  async function refreshStore(event) {
    if (event) event.preventDefault();
    try {
      const listed = await api.storeOrders($("store-filter").value);
      const rows = (listed.store_orders || []).map(renderStoreOrder);
      $("store-orders").tBodies[0].replaceChildren(...rows);
      $("no-store-orders").hidden = rows.length > 0;
      showProblem("");
    } catch (error) {
      showProblem(explain(error));
    }
  }

  function renderStoreOrder(order) {
    const row = el("tr", { "data-order-id": order.order_id },
      el("td", {}, order.order_id),
      el("td", {}, order.customer_id),
      el("td", {}, `${order.quantity} × ${order.item}`),
      el("td", { "data-role": "status" }, STATUS_WORDS[order.status] || order.status));
    const action = el("td");
    if (order.status === "STORE_ORDER_STATUS_RECEIVED") {
      const button = el("button", { type: "button", className: "ship",
        "aria-label": `Ship order ${order.order_id}` }, "Ship");
      button.addEventListener("click", async () => {
        button.disabled = true;
        try {
          await api.ship(order.order_id);
          showNotice(`Order ${order.order_id} shipped.`);
        } catch (error) {
          showProblem(explain(error));
        }
        refreshStore();
      });
      action.append(button);
    }
    row.append(action);
    return row;
  }

  // ------------------------------------------------------------------------------------

  function start() {
    const select = $("phone");
    PHONES.forEach((phone, index) => {
      select.append(el("option", { value: String(index) },
        `${phone.item} — ${won(phone.unitPrice)}`));
    });
    $("sign-in-form").addEventListener("submit", (event) => {
      event.preventDefault();
      try {
        signIn($("token").value.trim());
      } catch (error) {
        showProblem(explain(error));
        $("token").focus();
      }
    });
    $("sign-out").addEventListener("click", signOut);
    $("order-form").addEventListener("submit", placeOrder);
    $("dealer-form").addEventListener("submit", refreshStore);
    $("store-filter").addEventListener("change", () => refreshStore());
    const saved = sessionStorage.getItem(TOKEN_KEY);
    if (saved) {
      try {
        signIn(saved);
      } catch (error) {
        sessionStorage.removeItem(TOKEN_KEY);
      }
    }
    document.body.dataset.ready = "true";
  }

  start();
})();
