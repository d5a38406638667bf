// The phoneseller API from TypeScript: place an order, read it and the customer's history,
// cancel it. The stubs in src/gen/ come from buf.gen.yaml (protoc-gen-es); the calls go over
// Connect's gRPC transport (HTTP/2) to the gateway, which verifies the bearer token.
//
//   PHONESELLER_TOKEN=$(phoneseller token --customer alice) npm run example
//
// Environment:
//   PHONESELLER_TOKEN    a customer's bearer token (required); its subject is the customer
//   PHONESELLER_GATEWAY  the gateway's URL (default http://127.0.0.1:8080)
//
// Each step prints one line; the last line is a JSON summary (tests/distributions reads it).
import { randomUUID } from "node:crypto";
import { Code, ConnectError, createClient, type Interceptor } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { BadRequestSchema, ErrorInfoSchema, RetryInfoSchema } from "./gen/google/rpc/error_details_pb.js";
import { CustomerService, type OrderHistory } from "./gen/phoneseller/customer/v1/customer_service_pb.js";
import { type Order, OrderService, OrderStatus } from "./gen/phoneseller/order/v1/order_service_pb.js";

const CALL_TIMEOUT_MS = 10_000;
// The customer view is eventually consistent: an order shows up in the history shortly after
// it was placed.
const HISTORY_WAIT_MS = 30_000;
const CANCEL_ATTEMPTS = 5;

function required(name: string): string {
  const value = process.env[name];
  if (!value) {
    throw new Error(`${name} is not set; see the comment at the top of src/example.ts`);
  }
  return value;
}

/** The token's subject: a customer acts only for themselves, so it is the customer id. */
function subjectOf(token: string): string {
  const payload = token.split(".")[1];
  if (payload === undefined) {
    throw new Error("PHONESELLER_TOKEN is not a JWT");
  }
  const claims = JSON.parse(Buffer.from(payload, "base64url").toString("utf8")) as { sub?: unknown };
  if (typeof claims.sub !== "string" || claims.sub === "") {
    throw new Error("PHONESELLER_TOKEN has no subject");
  }
  return claims.sub;
}

/** Sends the token with every call, as the gateway requires. */
function bearer(token: string): Interceptor {
  return (next) => async (request) => {
    request.header.set("authorization", `Bearer ${token}`);
    return next(request);
  };
}

/** The error's code, message and the google.rpc details the services attach. */
function describe(error: ConnectError): string {
  const parts = [`${Code[error.code]}: ${error.rawMessage}`];
  for (const info of error.findDetails(ErrorInfoSchema)) {
    parts.push(`reason ${info.reason}`);
  }
  for (const bad of error.findDetails(BadRequestSchema)) {
    for (const violation of bad.fieldViolations) {
      parts.push(`field ${violation.field}: ${violation.description}`);
    }
  }
  return parts.join("; ");
}

function retryDelayMs(error: ConnectError): number | undefined {
  const [retry] = error.findDetails(RetryInfoSchema);
  if (retry?.retryDelay === undefined) {
    return undefined;
  }
  return Number(retry.retryDelay.seconds) * 1000 + retry.retryDelay.nanos / 1e6;
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

function show(order: Order): string {
  return `order ${order.orderId}: ${OrderStatus[order.status]}, ${order.quantity} × ${order.item}, ${order.amount} won, ${order.paybackPoints} points`;
}

async function main(): Promise<void> {
  const token = required("PHONESELLER_TOKEN");
  const customerId = subjectOf(token);
  const transport = createGrpcTransport({
    baseUrl: process.env.PHONESELLER_GATEWAY ?? "http://127.0.0.1:8080",
    interceptors: [bearer(token)],
  });
  const orders = createClient(OrderService, transport);
  const customers = createClient(CustomerService, transport);
  const options = { timeoutMs: CALL_TIMEOUT_MS };

  // An invalid request fails with INVALID_ARGUMENT and says which field is wrong.
  let rejected = "";
  try {
    await orders.placeOrder({ customerId, item: "Galaxy S25", quantity: 0, unitPrice: 1_000_000n }, options);
  } catch (error) {
    const failure = ConnectError.from(error);
    rejected = Code[failure.code];
    console.log(`refused: ${describe(failure)}`);
  }

  // The request id makes a retry of the same call idempotent (the service returns the first
  // result instead of ordering twice).
  const placed = await orders.placeOrder(
    { customerId, item: "Galaxy S25", quantity: 2, unitPrice: 1_250_000n, requestId: randomUUID() },
    options,
  );
  console.log(`placed ${show(placed)}`);

  const read = await orders.getOrder({ orderId: placed.orderId }, options);
  console.log(`read   ${show(read)}`);

  let seen: OrderHistory | undefined;
  let balance = 0n;
  const deadline = Date.now() + HISTORY_WAIT_MS;
  while (seen === undefined && Date.now() < deadline) {
    const history = await customers.getCustomerHistory({ customerId }, options);
    seen = history.orders.find((entry) => entry.orderId === placed.orderId);
    balance = history.pointBalance;
    if (seen === undefined) {
      await sleep(250);
    }
  }
  if (seen === undefined) {
    throw new Error(`order ${placed.orderId} did not show up in the history within ${HISTORY_WAIT_MS} ms`);
  }
  const timeline = seen.timeline.map((entry) => entry.eventType);
  console.log(`history: ${timeline.join(" → ")}; balance ${balance} points`);

  // When the points system is down, cancelling fails fast with UNAVAILABLE and a RetryInfo
  // detail; the example waits as long as it says and tries again.
  const cancelId = randomUUID();
  let cancelled: Order | undefined;
  for (let attempt = 1; cancelled === undefined; attempt++) {
    try {
      cancelled = await orders.cancelOrder({ orderId: placed.orderId, requestId: cancelId }, options);
    } catch (error) {
      const failure = ConnectError.from(error);
      const delay = retryDelayMs(failure);
      if (failure.code !== Code.Unavailable || delay === undefined || attempt >= CANCEL_ATTEMPTS) {
        throw failure;
      }
      console.log(`cancel: ${describe(failure)}; retrying in ${delay} ms`);
      await sleep(delay);
    }
  }
  console.log(`cancelled ${show(cancelled)}`);

  console.log(
    JSON.stringify({
      customerId,
      orderId: placed.orderId,
      rejected,
      placed: OrderStatus[placed.status],
      read: OrderStatus[read.status],
      historyTimeline: timeline,
      cancelled: OrderStatus[cancelled.status],
    }),
  );
}

main().catch((error: unknown) => {
  console.error(error instanceof ConnectError ? describe(error) : error);
  process.exitCode = 1;
});
