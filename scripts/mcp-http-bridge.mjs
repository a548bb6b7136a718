// Exposes a stdio MCP server over Streamable HTTP, one server process per HTTP session,
// so that test suites that only speak HTTP (the MCP conformance suite) can reach
// `nixcell mcp`. Messages are forwarded unchanged in both directions; responses and
// notifications tied to a request go back on that request's stream.
//
//   node mcp-http-bridge.mjs PORT COMMAND [ARGS...]
//
// Needs @modelcontextprotocol/sdk next to it (scripts/mcp-conformance.sh copies it into
// the npm directory where the SDK is installed).
import http from "node:http";
import { randomUUID } from "node:crypto";
import { StreamableHTTPServerTransport } from "@modelcontextprotocol/sdk/server/streamableHttp.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";

const [port, command, ...args] = process.argv.slice(2);
const sessions = new Map();

async function newSession() {
  const child = new StdioClientTransport({ command, args, stderr: "inherit", env: process.env });
  // progressToken -> id of the request that carries it, for progress notifications.
  const tokens = new Map();
  const http = new StreamableHTTPServerTransport({
    sessionIdGenerator: () => randomUUID(),
    onsessioninitialized: (id) => sessions.set(id, { http, child }),
  });
  http.onmessage = (msg) => {
    const token = msg?.params?._meta?.progressToken;
    if (token !== undefined && msg.id !== undefined) tokens.set(token, msg.id);
    child.send(msg).catch((e) => console.error("bridge: to server:", e));
  };
  http.onclose = () => {
    if (http.sessionId) sessions.delete(http.sessionId);
    child.close();
  };
  child.onmessage = (msg) => {
    let related;
    if (msg.id !== undefined && msg.method === undefined) related = msg.id;
    const token = msg?.params?.progressToken;
    if (msg.method === "notifications/progress" && tokens.has(token)) related = tokens.get(token);
    http.send(msg, related === undefined ? {} : { relatedRequestId: related }).catch((e) =>
      console.error("bridge: to client:", e),
    );
  };
  await child.start();
  return http;
}

const server = http.createServer(async (req, res) => {
  try {
    let body;
    if (req.method === "POST") {
      const chunks = [];
      for await (const c of req) chunks.push(c);
      body = JSON.parse(Buffer.concat(chunks).toString("utf8") || "null");
    }
    const sid = req.headers["mcp-session-id"];
    let transport;
    if (sid && sessions.has(sid)) {
      transport = sessions.get(sid).http;
    } else if (!sid && body && !Array.isArray(body) && body.method === "initialize") {
      transport = await newSession();
    } else {
      res.writeHead(400, { "content-type": "application/json" });
      res.end(JSON.stringify({ jsonrpc: "2.0", error: { code: -32000, message: "unknown or missing session" }, id: null }));
      return;
    }
    await transport.handleRequest(req, res, body);
  } catch (e) {
    console.error("bridge:", e);
    if (!res.headersSent) {
      res.writeHead(500);
      res.end();
    }
  }
});
server.listen(Number(port), "127.0.0.1", () => console.error(`bridge: http://127.0.0.1:${port}/mcp`));
