// @openai/agents-realtime: a RealtimeSession on the OpenAIRealtimeWebSocket transport (`ws`
// in Node), pointed at the relay with the transport's `url` option.
//
// The transport parses each server event with its own zod schemas and silently drops an
// event that fails them (parseRealtimeEvent -> isGeneric), so this script checks every
// raw event against the same schemas and fails on any rejected event of a known type.

import {
  OpenAIRealtimeWebSocket,
  RealtimeAgent,
  RealtimeSession,
  tool,
} from '@openai/agents-realtime';
import { z } from 'zod';

import {
  API_KEY,
  MODEL,
  WS_BASE_URL,
  check,
  chunks,
  describeError,
  runScenarios,
  speechPcm,
} from './common.mjs';

// The package's server event schema (not exported; the same module instance the transport uses).
const { realtimeServerEventSchema } = await import(
  new URL('openaiRealtimeEvents.mjs', import.meta.resolve('@openai/agents-realtime')).href
);
const KNOWN_TYPES = new Set(realtimeServerEventSchema.options.map((o) => o.shape.type.value));

const getWeather = tool({
  name: 'get_weather',
  description: 'The weather in a city.',
  parameters: z.object({ city: z.string() }),
  execute: async ({ city }) => `sunny in ${city}, 21 C`,
});

const agent = new RealtimeAgent({
  name: 'Assistant',
  instructions: 'You are a helpful assistant.',
  tools: [getWeather],
});

async function connect(recorder) {
  const transport = new OpenAIRealtimeWebSocket({ url: `${WS_BASE_URL}/realtime?model=${MODEL}` });
  // `model` must match the URL's: the agents SDK repeats it in every session.update, and a
  // session's model cannot change (its default, gpt-realtime-2.1, would be refused).
  const session = new RealtimeSession(agent, { transport, model: MODEL });
  session.on('transport_event', (event) => {
    recorder.push(event);
    if (KNOWN_TYPES.has(event.type)) {
      const parsed = realtimeServerEventSchema.safeParse(event);
      if (!parsed.success) {
        recorder.fail(`agents SDK rejects ${event.type}: ${JSON.stringify(parsed.error.issues)}`);
      }
    }
  });
  session.on('error', (error) => recorder.fail(`session error: ${describeError(error)}`));
  const created = recorder.until('session.created');
  await session.connect({ apiKey: API_KEY });
  await created;
  // The initial session.update (tools, audio config) must be accepted.
  await recorder.until('session.updated');
  return session;
}

/** The arguments of the session's next `name` event; a failure or a timeout ends the wait. */
function nextEvent(recorder, session, name, timeoutMs = 10000) {
  return recorder.guard(
    new Promise((resolve, reject) => {
      const listener = (...args) => {
        clearTimeout(timer);
        session.off(name, listener);
        resolve(args);
      };
      const timer = setTimeout(() => {
        session.off(name, listener);
        reject(new Error(`timed out waiting for the session's ${name} event`));
      }, timeoutMs);
      session.on(name, listener);
    }),
  );
}

/** Resolves once the session history satisfies `predicate` (now or on a history_updated). */
async function untilHistory(recorder, session, predicate, label) {
  while (!predicate(session.history)) {
    await nextEvent(recorder, session, 'history_updated').catch((error) => {
      throw new Error(`${label}: ${error.message}`);
    });
  }
}

function responseDone(recorder, after) {
  return recorder.until('response.done', { after });
}

/** The assistant's transcripts in the session history, in order. */
function assistantTranscripts(session) {
  return session.history
    .filter((item) => item.type === 'message' && item.role === 'assistant')
    .map((item) => item.content.map((part) => part.transcript ?? part.text ?? '').join(''));
}

async function text(recorder) {
  const session = await connect(recorder);
  try {
    const after = recorder.events.length;
    const ended = nextEvent(recorder, session, 'agent_end');
    session.sendMessage('hello relay');
    const done = await responseDone(recorder, after);
    check(done.response.status === 'completed', `status ${done.response.status}`);
    const [, , output] = await ended;
    check(output === 'hello relay', `agent_end output ${JSON.stringify(output)}`);
    const transcripts = assistantTranscripts(session);
    check(transcripts.at(-1) === 'hello relay', `history ${JSON.stringify(transcripts)}`);
    return { reply: output };
  } finally {
    session.close();
  }
}

async function audio(recorder) {
  const session = await connect(recorder);
  try {
    let audioChunks = 0;
    session.on('audio', () => {
      audioChunks += 1;
    });
    const after = recorder.events.length;
    for (const chunk of chunks(speechPcm())) {
      const bytes = chunk.buffer.slice(chunk.byteOffset, chunk.byteOffset + chunk.length);
      session.sendAudio(bytes);
    }
    // The default config asks for semantic_vad; the server ends the turn on its own.
    const committed = await recorder.until('input_audio_buffer.committed', { after });
    const done = await responseDone(recorder, after);
    check(done.response.status === 'completed', `status ${done.response.status}`);
    check(audioChunks > 0, 'no audio events');
    const transcript = recorder.joined('response.output_audio_transcript.delta');
    check(transcript.startsWith('I heard '), `transcript ${JSON.stringify(transcript)}`);
    const heard = await recorder.until('conversation.item.input_audio_transcription.completed');
    check(heard.item_id === committed.item_id, 'transcription of another item');
    return { transcript, audio_events: audioChunks, input_transcript: heard.transcript };
  } finally {
    session.close();
  }
}

async function functionCall(recorder) {
  const session = await connect(recorder);
  try {
    const updated = recorder.ofType('session.updated').at(-1);
    const tools = updated.session.tools.map((t) => t.name);
    check(tools.join() === 'get_weather', `session tools ${JSON.stringify(tools)}`);
    const toolEnd = nextEvent(recorder, session, 'agent_tool_end');
    const after = recorder.events.length;
    session.sendMessage('what is the weather in Paris?');
    const [, , toolUsed, result, details] = await toolEnd;
    check(toolUsed.name === 'get_weather', `tool ${toolUsed.name}`);
    check(result === 'sunny in Paris, 21 C', `tool result ${JSON.stringify(result)}`);
    const callId = details?.toolCall?.callId;
    // The SDK sends function_call_output and response.create by itself.
    const reply = 'The weather tool said: sunny in Paris, 21 C';
    const second = await recorder.until(
      (e) =>
        e.type === 'response.done' &&
        e.response.output.some((item) => item.content?.[0]?.transcript === reply),
      { after },
    );
    check(second.response.status === 'completed', `status ${second.response.status}`);
    const sent = recorder.ofType('conversation.item.done').find(
      (e) => e.item.type === 'function_call_output',
    );
    check(sent?.item.output === result, `function_call_output ${JSON.stringify(sent)}`);
    const hasReply = () => assistantTranscripts(session).includes(reply);
    await untilHistory(recorder, session, hasReply, 'the reply in the history');
    return { call_id: callId ?? sent.item.call_id, result, reply };
  } finally {
    session.close();
  }
}

async function interrupt(recorder) {
  const session = await connect(recorder);
  try {
    const after = recorder.events.length;
    const firstAudio = nextEvent(recorder, session, 'audio');
    const interrupted = nextEvent(recorder, session, 'audio_interrupted');
    session.sendMessage('tell me a long story');
    await firstAudio;
    session.interrupt(); // response.cancel, then conversation.item.truncate
    await interrupted;
    const done = await responseDone(recorder, after);
    check(done.response.status === 'cancelled', `status ${done.response.status}`);
    const reason = done.response.status_details?.reason;
    check(reason === 'client_cancelled', `reason ${reason}`);
    await recorder.until('conversation.item.truncated', { after });
    // The session goes on: the next turn completes.
    const nextAfter = recorder.events.length;
    session.sendMessage('hello again');
    const next = await responseDone(recorder, nextAfter);
    check(next.response.status === 'completed', `next status ${next.response.status}`);
    return { cancelled: done.response.id, next_status: next.response.status };
  } finally {
    session.close();
  }
}

await runScenarios('agents-realtime', {
  text,
  audio,
  function_call: functionCall,
  interrupt,
});
