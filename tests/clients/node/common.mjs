// Shared by the Node client scripts: configuration, an event recorder, the scenario runner.
//
// Environment (set by tests/clients/test_node_clients.py):
//   RELAY_BASE_URL   https://127.0.0.1:PORT/v1 (the server's ready banner)
//   OPENAI_API_KEY   any key the server accepts
//   SPEECH_PCM       a file of speech-like PCM16 24 kHz mono audio that the server VAD detects
//   EVENTS_DIR       where each scenario writes the server events it saw, one JSON per line
//   NODE_EXTRA_CA_CERTS  the test CA, so that wss:// to 127.0.0.1 verifies
//
// Usage: node SCRIPT.mjs [SCENARIO ...]; prints one JSON line per scenario,
// {"client", "scenario", "ok", ...}, and exits 1 if any scenario failed.

import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

export const BASE_URL = required('RELAY_BASE_URL');
export const WS_BASE_URL = BASE_URL.replace(/^https:/, 'wss:').replace(/^http:/, 'ws:');
export const API_KEY = required('OPENAI_API_KEY');
export const MODEL = 'gpt-realtime';
const EVENTS_DIR = process.env.EVENTS_DIR;

function required(name) {
  const value = process.env[name];
  if (!value) {
    throw new Error(`${name} is not set`);
  }
  return value;
}

export function speechPcm() {
  return readFileSync(required('SPEECH_PCM'));
}

/** Split PCM16 24 kHz audio into chunks of `chunkMs` (48 bytes a millisecond). */
export function* chunks(pcm, chunkMs = 40) {
  const step = 48 * chunkMs;
  for (let offset = 0; offset < pcm.length; offset += step) {
    yield pcm.subarray(offset, offset + step);
  }
}

/**
 * `promise`, marked as handled: a wait that a scenario starts early and abandons when
 * something else fails must not crash the process with an unhandled rejection (awaiting
 * it still throws).
 */
function handled(promise) {
  promise.catch(() => {});
  return promise;
}

/** Every server event of one scenario, with waits that time out. */
export class Recorder {
  constructor() {
    this.events = [];
    this.failures = [];
    this.waiters = [];
    this.failed = new Promise((_resolve, reject) => {
      this.rejectFailed = reject;
    });
    this.failed.catch(() => {}); // observed through guard() and until()
  }

  /** `promise`, or the first failure if that comes first. */
  guard(promise) {
    return handled(Promise.race([promise, this.failed]));
  }

  push(event) {
    this.events.push(event);
    if (event.type === 'error') {
      this.fail(`error event: ${JSON.stringify(event)}`);
    }
    this.waiters = this.waiters.filter((waiter) => !waiter.check());
  }

  fail(message) {
    this.failures.push(String(message));
    this.rejectFailed(new Error(this.failures.join('; ')));
    for (const waiter of this.waiters) {
      waiter.reject(new Error(this.failures.join('; ')));
    }
    this.waiters = [];
  }

  ofType(type) {
    return this.events.filter((event) => event.type === type);
  }

  /** The next event matching `predicate` (a type or a function) after the `after`-th. */
  until(predicate, { after = 0, timeoutMs = 10000 } = {}) {
    const matches = typeof predicate === 'string' ? (e) => e.type === predicate : predicate;
    const label = typeof predicate === 'string' ? predicate : 'a matching event';
    const waiting = new Promise((resolve, reject) => {
      const check = () => {
        const found = this.events.slice(after).find(matches);
        if (found) {
          clearTimeout(timer);
          resolve(found);
        }
        return Boolean(found);
      };
      const timer = setTimeout(() => {
        this.waiters = this.waiters.filter((waiter) => waiter.check !== check);
        reject(new Error(`timed out after ${timeoutMs} ms waiting for ${label}`));
      }, timeoutMs);
      if (this.failures.length) {
        clearTimeout(timer);
        reject(new Error(this.failures.join('; ')));
      } else if (!check()) {
        this.waiters.push({ check, reject });
      }
    });
    return handled(waiting);
  }

  /** Text of all deltas of `type` (optionally of one response). */
  joined(type, responseId) {
    return this.ofType(type)
      .filter((event) => responseId === undefined || event.response_id === responseId)
      .map((event) => event.delta)
      .join('');
  }

  audioBytes(responseId) {
    return this.ofType('response.output_audio.delta')
      .filter((event) => responseId === undefined || event.response_id === responseId)
      .reduce((total, event) => total + Buffer.from(event.delta, 'base64').length, 0);
  }
}

/** A readable message for an Error, a ws ErrorEvent ({error, message}) or an SDK error object. */
export function describeError(error) {
  const inner = error?.error ?? error;
  if (inner instanceof Error) {
    return inner.stack ?? inner.message;
  }
  if (typeof inner?.message === 'string') {
    return inner.message;
  }
  try {
    return JSON.stringify(inner);
  } catch {
    return String(inner);
  }
}

export function check(condition, message) {
  if (!condition) {
    throw new Error(message);
  }
}

/**
 * Run the scenarios named on the command line (all by default). Each gets a fresh
 * Recorder; `scenarios[name](recorder)` returns details for the result line.
 */
export async function runScenarios(client, scenarios, { timeoutMs = 20000 } = {}) {
  const names = process.argv.slice(2).length ? process.argv.slice(2) : Object.keys(scenarios);
  let failed = false;
  for (const name of names) {
    const recorder = new Recorder();
    const result = { client, scenario: name, ok: false };
    let timer;
    try {
      if (!(name in scenarios)) {
        throw new Error(`unknown scenario ${name}`);
      }
      const deadline = new Promise((_resolve, reject) => {
        timer = setTimeout(() => reject(new Error(`scenario timed out (${timeoutMs} ms)`)), timeoutMs);
      });
      Object.assign(result, await Promise.race([scenarios[name](recorder), deadline]));
      check(!recorder.failures.length, recorder.failures.join('; '));
      result.ok = true;
    } catch (error) {
      result.error = describeError(error);
      failed = true;
    } finally {
      clearTimeout(timer);
    }
    result.events = recorder.events.length;
    if (EVENTS_DIR) {
      const path = join(EVENTS_DIR, `${client}-${name}.jsonl`);
      writeFileSync(path, recorder.events.map((event) => JSON.stringify(event)).join('\n') + '\n');
      result.events_file = path;
    }
    process.stdout.write(JSON.stringify(result) + '\n');
  }
  // Open sockets or timers must not keep a finished run alive.
  process.exit(failed ? 1 : 0);
}
