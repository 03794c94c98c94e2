'use strict';
// relay.js - the reference relay for the hotplex benchmarks: the same job as
// the gateway (AEP v1 over WebSocket <-> one Claude Code process per session
// speaking stream-json), written the way most people would write it in
// Node.js with the `ws` package: spawn the agent, read lines, JSON.parse,
// map to AEP envelopes, JSON.stringify, ws.send to every attached client.
//
// It speaks the AEP subset hotplex_loadgen uses: init -> init_ack (new
// session, or attach/resume by session_id with last_seq replay from memory),
// input -> a stdin line for the agent, ping -> pong. worker_type "echo" is an
// in-process echo (SCENARIO:long N) like the gateway's, for handshake tests.
// No persistence, no auth, no backpressure handling: deliberately ordinary.
//
// usage: node relay.js --listen 127.0.0.1:0 --agent /path/to/synth_agent
// prints "listening on HOST:PORT" first on stdout.

const { WebSocketServer } = require('ws');
const { spawn } = require('child_process');
const readline = require('readline');
const crypto = require('crypto');

let listen = '127.0.0.1:0';
let agentBin = 'claude';
for (let i = 2; i < process.argv.length; i++) {
  if (process.argv[i] === '--listen') listen = process.argv[++i];
  else if (process.argv[i] === '--agent') agentBin = process.argv[++i];
}
const [host, port] = [listen.slice(0, listen.lastIndexOf(':')), Number(listen.slice(listen.lastIndexOf(':') + 1))];

const HISTORY_MAX = 20000;
const sessions = new Map();

function envelope(session, seq, type, data) {
  return JSON.stringify({
    version: 'aep/v1',
    id: 'evt_' + crypto.randomUUID(),
    seq,
    session_id: session.id,
    timestamp: Date.now(),
    event: { type, data },
  });
}

class Session {
  constructor(id, workerType) {
    this.id = id;
    this.workerType = workerType;
    this.seq = 0;
    this.clients = new Set();
    this.history = [];
    this.child = null;
    this.state = 'created';
    this.msgId = null;
  }

  emit(type, data) {
    const seq = ++this.seq;
    const msg = envelope(this, seq, type, data);
    this.history.push({ seq, msg });
    if (this.history.length > HISTORY_MAX) this.history.splice(0, this.history.length - HISTORY_MAX / 2);
    for (const ws of this.clients) ws.send(msg);
  }

  setState(state) {
    if (state === this.state) return;
    this.state = state;
    this.emit('state', { state });
  }

  start() {
    if (this.workerType === 'echo' || this.child) return;
    const child = spawn(agentBin, [
      '-p', '--input-format', 'stream-json', '--output-format', 'stream-json', '--verbose',
      '--include-partial-messages', '--permission-prompt-tool', 'stdio', '--session-id', this.id,
    ], { stdio: ['pipe', 'pipe', 'pipe'] });
    this.child = child;
    child.stderr.resume();
    child.stdin.on('error', () => {});
    const rl = readline.createInterface({ input: child.stdout });
    rl.on('line', (line) => this.onLine(line));
    child.on('exit', (code, signal) => {
      this.child = null;
      if (this.state === 'running') {
        this.emit('error', { code: 'WORKER_CRASH', message: `agent exited (${code ?? signal})` });
        this.emit('done', { success: false, stats: {} });
      }
      this.setState('terminated');
    });
    this.setState('running');
  }

  onLine(line) {
    let msg;
    try {
      msg = JSON.parse(line);
    } catch (e) {
      return;
    }
    switch (msg.type) {
      case 'stream_event': {
        const ev = msg.event;
        if (ev.type === 'message_start') {
          this.msgId = ev.message.id;
          this.emit('message.start', { id: this.msgId, role: 'assistant', content_type: 'text' });
        } else if (ev.type === 'content_block_delta' && ev.delta.type === 'text_delta') {
          this.emit('message.delta', { message_id: this.msgId, content: ev.delta.text });
        } else if (ev.type === 'content_block_stop') {
          this.emit('message.end', { message_id: this.msgId });
        }
        break;
      }
      case 'assistant': {
        const text = msg.message.content.filter((b) => b.type === 'text').map((b) => b.text).join('');
        this.emit('message', { id: msg.message.id, role: 'assistant', content: text, content_type: 'text' });
        break;
      }
      case 'result':
        this.emit('done', {
          success: !msg.is_error,
          stats: {
            duration_ms: msg.duration_ms,
            num_turns: msg.num_turns,
            total_cost_usd: msg.total_cost_usd,
            usage: msg.usage,
          },
        });
        this.setState('idle');
        break;
      default:
        break;
    }
  }

  input(content) {
    if (this.workerType === 'echo') return this.echo(content);
    if (!this.child) this.start();
    this.setState('running');
    this.child.stdin.write(JSON.stringify({ type: 'user', message: { role: 'user', content } }) + '\n');
  }

  echo(content) {
    this.setState('running');
    const m = /^SCENARIO:long (\d+)/.exec(content);
    const words = m ? Array.from({ length: Number(m[1]) }, (_, i) => `w${i + 1}`) : content.split(' ');
    const id = 'msg_echo_' + this.seq;
    this.emit('message.start', { id, role: 'assistant', content_type: 'text' });
    for (let i = 0; i < words.length; i++) {
      this.emit('message.delta', { message_id: id, content: (i ? ' ' : '') + words[i] });
    }
    this.emit('message.end', { message_id: id });
    this.emit('message', { id, role: 'assistant', content: words.join(' '), content_type: 'text' });
    this.emit('done', { success: true, stats: { duration_ms: 0, num_turns: 1, total_cost_usd: 0 } });
    this.setState('idle');
  }
}

function initAck(ws, session, seq, extra) {
  ws.send(envelope(session, seq, 'init_ack', {
    session_id: session.id,
    state: session.state,
    server_caps: {
      protocol_version: 'aep/v1', worker_type: session.workerType, supports_resume: true,
      supports_delta: true, supports_tool_call: true, supports_ping: true,
      max_frame_size: 32768, modalities: ['text', 'code'],
    },
    last_seq: session.seq,
    ...extra,
  }));
}

const wss = new WebSocketServer({ host, port, path: '/ws', maxPayload: 32768 });

wss.on('connection', (ws) => {
  let session = null;
  ws.on('message', (raw) => {
    let msg;
    try {
      msg = JSON.parse(raw);
    } catch (e) {
      return;
    }
    const ev = msg.event || {};
    const data = ev.data || {};
    if (!session) {
      if (ev.type !== 'init') return ws.close(1008, 'init first');
      const key = msg.session_id || data.session_id;
      session = key && sessions.get(key);
      if (!session) {
        session = new Session(key || crypto.randomUUID(), data.worker_type || 'claude_code');
        sessions.set(session.id, session);
        session.start();
      }
      const resume = Number.isInteger(data.last_seq);
      const from = resume ? data.last_seq : session.seq;
      initAck(ws, session, from > 0 ? from : 1);
      if (resume) for (const h of session.history) if (h.seq > from) ws.send(h.msg);
      session.clients.add(ws);
      return;
    }
    if (ev.type === 'input') session.input(String(data.content ?? ''));
    else if (ev.type === 'ping') ws.send(envelope(session, session.seq || 1, 'pong', { state: session.state }));
  });
  ws.on('close', () => {
    if (session) session.clients.delete(ws);
  });
  ws.on('error', () => {});
});

wss.on('listening', () => {
  console.log(`listening on ${host}:${wss.address().port}`);
});

function shutdown() {
  for (const s of sessions.values()) if (s.child) s.child.kill('SIGTERM');
  process.exit(0);
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
