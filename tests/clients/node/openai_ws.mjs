// The `openai` npm package's Realtime WebSocket client (OpenAIRealtimeWS, on `ws`).
// It always dials wss:// (buildRealtimeURL), so the server runs with TLS.

import { once } from 'node:events';

import OpenAI from 'openai';
import { OpenAIRealtimeWS } from 'openai/realtime/ws';

import { API_KEY, BASE_URL, MODEL, check, chunks, runScenarios, speechPcm } from './common.mjs';

const WEATHER_TOOL = {
  type: 'function',
  name: 'get_weather',
  description: 'The weather in a city.',
  parameters: {
    type: 'object',
    properties: { city: { type: 'string' } },
    required: ['city'],
  },
};

async function connect(recorder) {
  const client = new OpenAI({ apiKey: API_KEY, baseURL: BASE_URL });
  const rt = await OpenAIRealtimeWS.create(client, { model: MODEL });
  check(rt.url.protocol === 'wss:', `the SDK dialled ${rt.url}`);
  rt.on('event', (event) => recorder.push(event));
  // The SDK emits server `error` events and socket errors here.
  rt.on('error', (error) => recorder.fail(`client error: ${error.message}`));
  rt.socket.on('close', (code) => {
    if (!rt.closing) {
      recorder.fail(`socket closed by the server (${code})`);
    }
  });
  await once(rt.socket, 'open');
  await recorder.until('session.created');
  return rt;
}

function close(rt) {
  rt.closing = true;
  rt.close();
}

async function updateSession(rt, recorder, session) {
  const after = recorder.events.length;
  rt.send({ type: 'session.update', session: { type: 'realtime', ...session } });
  return recorder.until('session.updated', { after });
}

function userText(rt, text) {
  rt.send({
    type: 'conversation.item.create',
    item: { type: 'message', role: 'user', content: [{ type: 'input_text', text }] },
  });
}

/** Send response.create and wait for that response's response.done. */
async function respond(rt, recorder) {
  const after = recorder.events.length;
  rt.send({ type: 'response.create' });
  const created = await recorder.until('response.created', { after });
  return recorder.until(
    (e) => e.type === 'response.done' && e.response.id === created.response.id,
    { after },
  );
}

async function text(recorder) {
  const rt = await connect(recorder);
  try {
    const updated = await updateSession(rt, recorder, { output_modalities: ['text'] });
    check(updated.session.output_modalities[0] === 'text', 'output_modalities not updated');
    userText(rt, 'hello relay');
    const done = await respond(rt, recorder);
    check(done.response.status === 'completed', `status ${done.response.status}`);
    const reply = recorder.joined('response.output_text.delta', done.response.id);
    check(reply === 'hello relay', `reply ${JSON.stringify(reply)}`);
    return { reply };
  } finally {
    close(rt);
  }
}

async function audio(recorder) {
  const rt = await connect(recorder);
  try {
    await updateSession(rt, recorder, {
      audio: { input: { transcription: { model: 'whisper-1' } } },
    });
    for (const chunk of chunks(speechPcm())) {
      rt.send({ type: 'input_audio_buffer.append', audio: chunk.toString('base64') });
    }
    // Server VAD ends the turn on the trailing silence and starts a response.
    const started = await recorder.until('input_audio_buffer.speech_started');
    const committed = await recorder.until('input_audio_buffer.committed');
    check(started.item_id === committed.item_id, 'speech_started and committed differ');
    const done = await recorder.until('response.done');
    check(done.response.status === 'completed', `status ${done.response.status}`);
    const transcript = recorder.joined('response.output_audio_transcript.delta');
    check(transcript.startsWith('I heard '), `transcript ${JSON.stringify(transcript)}`);
    const audioBytes = recorder.audioBytes(done.response.id);
    check(audioBytes > 0 && audioBytes % 2 === 0, `${audioBytes} bytes of output audio`);
    const heard = await recorder.until(
      'conversation.item.input_audio_transcription.completed',
    );
    check(heard.item_id === committed.item_id, 'transcription of another item');
    return { transcript, audio_bytes: audioBytes, input_transcript: heard.transcript };
  } finally {
    close(rt);
  }
}

async function functionCall(recorder) {
  const rt = await connect(recorder);
  try {
    await updateSession(rt, recorder, { tools: [WEATHER_TOOL], tool_choice: 'auto' });
    userText(rt, 'what is the weather in Paris?');
    const first = await respond(rt, recorder);
    const call = first.response.output.find((item) => item.type === 'function_call');
    check(call?.name === 'get_weather', `no get_weather call: ${JSON.stringify(first.response)}`);
    check(JSON.parse(call.arguments).city === 'Paris', `arguments ${call.arguments}`);
    rt.send({
      type: 'conversation.item.create',
      item: { type: 'function_call_output', call_id: call.call_id, output: 'sunny, 21 C' },
    });
    const second = await respond(rt, recorder);
    check(second.response.status === 'completed', `status ${second.response.status}`);
    const spoken = recorder.joined('response.output_audio_transcript.delta', second.response.id);
    check(spoken === 'The weather tool said: sunny, 21 C', `reply ${JSON.stringify(spoken)}`);
    check(recorder.audioBytes(second.response.id) > 0, 'the reply has no audio');
    return { call_id: call.call_id, arguments: call.arguments, reply: spoken };
  } finally {
    close(rt);
  }
}

async function interrupt(recorder) {
  const rt = await connect(recorder);
  try {
    userText(rt, 'tell me a long story');
    const after = recorder.events.length;
    rt.send({ type: 'response.create' });
    const created = await recorder.until('response.created', { after });
    const delta = await recorder.until('response.output_audio.delta', { after });
    // What a client does when the user stops playback: cancel, then truncate what was heard.
    rt.send({ type: 'response.cancel' });
    rt.send({
      type: 'conversation.item.truncate',
      item_id: delta.item_id,
      content_index: delta.content_index,
      audio_end_ms: 0,
    });
    const done = await recorder.until('response.done', { after });
    check(done.response.id === created.response.id, 'response.done of another response');
    check(done.response.status === 'cancelled', `status ${done.response.status}`);
    const reason = done.response.status_details?.reason;
    check(reason === 'client_cancelled', `reason ${reason}`);
    const truncated = await recorder.until('conversation.item.truncated', { after });
    check(truncated.item_id === delta.item_id, 'truncated another item');
    // The session goes on: the next turn completes.
    userText(rt, 'hello again');
    const next = await respond(rt, recorder);
    check(next.response.status === 'completed', `next status ${next.response.status}`);
    return { cancelled: done.response.id, next_status: next.response.status };
  } finally {
    close(rt);
  }
}

await runScenarios('openai-node', {
  text,
  audio,
  function_call: functionCall,
  interrupt,
});
