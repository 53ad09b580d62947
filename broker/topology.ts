/**
 * The whole RabbitMQ topology as data, and its declaration. Every role declares it at start and
 * again after each reconnect; declaring is idempotent because every queue's arguments are
 * constants here (RabbitMQ refuses a redeclaration with different arguments: 406). Under
 * per-role credentials (ops/rabbitmq/definitions.json) a role may not declare the shared parts:
 * `ensureTopology` and `declaredChannel` then check that they exist instead.
 *
 * Queue names are made only by the helpers below, so no queue name is written twice.
 */
import type { Channel, ChannelModel } from 'amqplib';
import { WispError } from '../common/errors.ts';

/** Dead-letter exchange: refused messages and expired ones go here. */
export const DLX_EXCHANGE = 'wisp.dlx';
/** Routing key and name of the durable queue that keeps dead letters for inspection. */
export const DEAD_QUEUE = 'wisp.dead';
/**
 * Uplink topic exchange: everything devices and clients publish goes through it, keyed by who
 * sends and what (see `uplinkRoute`). Under per-role credentials (ops/rabbitmq) devices and
 * clients may not write to the default exchange; topic permissions on this exchange's routing
 * keys decide what each may send (a device: only `scheduler.<its own device ids>`).
 */
export const UPLINK_EXCHANGE = 'wisp.up';
/** Shared prompt queue: edge fleets compete for PromptRequests. */
export const PROMPTS_QUEUE = 'wisp.prompts';
/** The scheduler's inbox: SessionOpen, VerifyRequest, SessionClose, WorkerStatus. */
export const SCHEDULER_QUEUE = 'wisp.scheduler';

/** Header carrying the reason a message was dead-lettered (one line). */
export const REASON_HEADER = 'x-wisp-reason';
/** Header carrying the queue a dead-lettered message was consumed from. */
export const QUEUE_HEADER = 'x-wisp-queue';

/** Unused per-id queues vanish after this long (no consumer, no redeclare). */
export const WORKER_QUEUE_EXPIRES_MS = 30 * 60_000;
export const DEVICE_QUEUE_EXPIRES_MS = 10 * 60_000;
export const CLIENT_QUEUE_EXPIRES_MS = 60_000;

export type QueueKind = 'prompts' | 'devicePrompts' | 'scheduler' | 'worker' | 'device' | 'client' | 'dead' | 'other';

/** One queue as declared: name, durability and its x-arguments. */
export interface QueueSpec {
  name: string;
  kind: QueueKind;
  durable: boolean;
  arguments: Record<string, string | number>;
  /** Binding to the uplink exchange, made with the queue (publishers in uplink mode rely on it). */
  uplinkKey?: string;
}

export interface ExchangeSpec {
  name: string;
  type: 'direct' | 'fanout' | 'topic';
  durable: boolean;
}

export interface BindingSpec {
  queue: string;
  exchange: string;
  routingKey: string;
}

export interface Topology {
  exchanges: ExchangeSpec[];
  queues: QueueSpec[];
  bindings: BindingSpec[];
}

const ID_PATTERN = /^[A-Za-z0-9._:-]{1,128}$/;

/** Thrown when a per-id queue name is asked for with an id that would not be a safe queue name. */
export class QueueNameError extends WispError {
  constructor(kind: string, id: string) {
    super('bad_queue_id', `topology: ${kind} id ${JSON.stringify(id)} is not an id ([A-Za-z0-9._:-], 1-128 chars)`);
  }
}

function checkId(kind: string, id: string): string {
  if (!ID_PATTERN.test(id)) throw new QueueNameError(kind, id);
  return id;
}

/** `wisp.worker.<workerId>`: VerifyBatch messages for one verifier worker. */
export function workerQueue(workerId: string): string {
  return `wisp.worker.${checkId('worker', workerId)}`;
}

/** `wisp.device.<deviceId>`: the device's reply queue (VerifyResult, TokenStream, Error). */
export function deviceQueue(deviceId: string): string {
  return `wisp.device.${checkId('device', deviceId)}`;
}

/** `wisp.prompts.<deviceId>`: prompts addressed to one device. */
export function devicePromptQueue(deviceId: string): string {
  return `wisp.prompts.${checkId('device', deviceId)}`;
}

/** `wisp.client.<clientId>`: a client's result queue (TokenChunk, Error). */
export function clientQueue(clientId: string): string {
  return `wisp.client.${checkId('client', clientId)}`;
}

/** Arguments every work queue carries, so expired or nacked messages reach `wisp.dead`. */
const DLX_ARGS = { 'x-dead-letter-exchange': DLX_EXCHANGE, 'x-dead-letter-routing-key': DEAD_QUEUE } as const;

/**
 * The declaration for a queue name, derived from its prefix. Unknown names get a durable
 * queue with the dead-letter arguments (kind 'other').
 */
export function queueSpec(name: string): QueueSpec {
  // `wisp.dead.<x>`: a private dead-letter queue (tests, tools) bound to the DLX under its own name.
  if (name === DEAD_QUEUE || name.startsWith(`${DEAD_QUEUE}.`)) return { name, kind: 'dead', durable: true, arguments: {} };
  if (name === PROMPTS_QUEUE) return { name, kind: 'prompts', durable: true, arguments: { ...DLX_ARGS }, uplinkKey: 'prompts' };
  if (name === SCHEDULER_QUEUE) return { name, kind: 'scheduler', durable: true, arguments: { ...DLX_ARGS }, uplinkKey: 'scheduler.#' };
  if (name.startsWith('wisp.worker.'))
    return { name, kind: 'worker', durable: true, arguments: { ...DLX_ARGS, 'x-expires': WORKER_QUEUE_EXPIRES_MS } };
  if (name.startsWith('wisp.device.'))
    return { name, kind: 'device', durable: true, arguments: { ...DLX_ARGS, 'x-expires': DEVICE_QUEUE_EXPIRES_MS } };
  if (name.startsWith('wisp.prompts.'))
    return { name, kind: 'devicePrompts', durable: true, arguments: { ...DLX_ARGS, 'x-expires': DEVICE_QUEUE_EXPIRES_MS }, uplinkKey: `prompts.${name.slice('wisp.prompts.'.length)}` };
  // Client queues are durable (their chunks survive a broker restart) but expire a minute after their client left.
  if (name.startsWith('wisp.client.'))
    return { name, kind: 'client', durable: true, arguments: { ...DLX_ARGS, 'x-expires': CLIENT_QUEUE_EXPIRES_MS }, uplinkKey: `client.${name.slice('wisp.client.'.length)}` };
  return { name, kind: 'other', durable: true, arguments: { ...DLX_ARGS } };
}

/** True when messages to this queue should be persistent (it survives a broker restart). */
export function isDurableQueue(name: string): boolean {
  return name.startsWith('amq.') ? false : queueSpec(name).durable;
}

/** The shared part of the topology, declared by every role. */
export const TOPOLOGY: Topology = {
  exchanges: [
    { name: DLX_EXCHANGE, type: 'direct', durable: true },
    { name: UPLINK_EXCHANGE, type: 'topic', durable: true },
  ],
  queues: [queueSpec(DEAD_QUEUE), queueSpec(PROMPTS_QUEUE), queueSpec(SCHEDULER_QUEUE)],
  bindings: [{ queue: DEAD_QUEUE, exchange: DLX_EXCHANGE, routingKey: DEAD_QUEUE }],
};

/** Declares one queue exactly as its spec says, with its uplink binding. */
export async function declareQueue(channel: Channel, spec: QueueSpec): Promise<void> {
  await channel.assertQueue(spec.name, { durable: spec.durable, arguments: spec.arguments });
  if (spec.uplinkKey !== undefined) await channel.bindQueue(spec.name, UPLINK_EXCHANGE, spec.uplinkKey);
}

/** Where an uplink publish goes: exchange `wisp.up` and the routing key that names the sender. */
export interface UplinkRoute {
  exchange: string;
  routingKey: string;
}

/**
 * The uplink route of a message meant for `queue`, or null when devices and clients may not
 * send there. Requests to the scheduler are keyed by the device id they carry
 * (`scheduler.<deviceId>`), so the broker's topic permissions authenticate it and the
 * scheduler can check the key against the body.
 */
export function uplinkRoute(queue: string, message: unknown): UplinkRoute | null {
  const spec = queueSpec(queue);
  if (spec.kind === 'scheduler') {
    const deviceId = typeof message === 'object' && message !== null ? (message as { deviceId?: unknown }).deviceId : undefined;
    if (typeof deviceId !== 'string' || !ID_PATTERN.test(deviceId)) return null;
    return { exchange: UPLINK_EXCHANGE, routingKey: `scheduler.${deviceId}` };
  }
  if (spec.kind === 'prompts' || spec.kind === 'devicePrompts' || spec.kind === 'client') return { exchange: UPLINK_EXCHANGE, routingKey: spec.uplinkKey! };
  return null;
}

/** The device that sent a delivery through the uplink (`scheduler.<deviceId>`), or null. */
export function uplinkSender(exchange: string, routingKey: string): string | null {
  if (exchange !== UPLINK_EXCHANGE || !routingKey.startsWith('scheduler.')) return null;
  const id = routingKey.slice('scheduler.'.length);
  return ID_PATTERN.test(id) ? id : null;
}

/**
 * Declares the shared topology plus any extra queues (a role's own per-id queues).
 * Idempotent: safe to call from every process, at every (re)connect.
 */
export async function declareTopology(channel: Channel, extraQueues: readonly QueueSpec[] = [], topology: Topology = TOPOLOGY): Promise<void> {
  for (const ex of topology.exchanges) await channel.assertExchange(ex.name, ex.type, { durable: ex.durable });
  for (const q of [...topology.queues, ...extraQueues]) await declareQueue(channel, q);
  for (const b of topology.bindings) await channel.bindQueue(b.queue, b.exchange, b.routingKey);
}

/**
 * What one broker client declares at every (re)connect: the shared topology, the queues its
 * role owns, and its dead-letter queue when that is a private one (bound to the DLX under its
 * own name).
 */
export function clientTopology(ownQueues: Iterable<string>, deadLetterQueue: string): Topology {
  const queues = [...TOPOLOGY.queues, ...[...ownQueues].map(queueSpec)];
  if (deadLetterQueue !== DEAD_QUEUE) queues.push(queueSpec(deadLetterQueue));
  const bindings = [...TOPOLOGY.bindings];
  if (deadLetterQueue !== DEAD_QUEUE) bindings.push({ queue: deadLetterQueue, exchange: DLX_EXCHANGE, routingKey: deadLetterQueue });
  return { exchanges: TOPOLOGY.exchanges, queues, bindings };
}

/** AMQP reply code of a refused access (the credential lacks the permission). */
const ACCESS_REFUSED = 403;

function isAccessRefused(err: unknown): boolean {
  const e = err as { code?: unknown; message?: unknown };
  return e?.code === ACCESS_REFUSED || (typeof e?.message === 'string' && e.message.includes('ACCESS_REFUSED'));
}

async function scratchChannel(model: ChannelModel): Promise<Channel> {
  const ch = await model.createChannel();
  ch.on('error', () => {}); // a refused declaration closes the channel with an error event
  return ch;
}

/**
 * Declares exchanges, queues (with their uplink bindings) and bindings on a scratch channel.
 * A declaration the credential may not make (403: per-role users, whose shared topology comes
 * from ops/rabbitmq/definitions.json) becomes a passive check that the thing exists; a binding
 * it may not make is left to the definitions.
 */
export async function ensureTopology(model: ChannelModel, topology: Topology): Promise<void> {
  let ch = await scratchChannel(model);
  const attempt = async (what: string, declare: (c: Channel) => Promise<unknown>, check?: (c: Channel) => Promise<unknown>) => {
    try {
      await declare(ch);
    } catch (err) {
      if (!isAccessRefused(err)) throw err;
      ch = await scratchChannel(model);
      if (!check) return;
      try {
        await check(ch);
      } catch (checkErr) {
        ch = await scratchChannel(model);
        throw new Error(`${what} does not exist and this credential may not declare it (apply ops/rabbitmq/definitions.json): ${(checkErr as Error).message}`);
      }
    }
  };
  try {
    for (const ex of topology.exchanges) {
      await attempt(`exchange ${ex.name}`, (c) => c.assertExchange(ex.name, ex.type, { durable: ex.durable }), (c) => c.checkExchange(ex.name));
    }
    for (const q of topology.queues) {
      await attempt(`queue ${q.name}`, (c) => c.assertQueue(q.name, { durable: q.durable, arguments: q.arguments }), (c) => c.checkQueue(q.name));
      const key = q.uplinkKey;
      if (key !== undefined) await attempt(`binding of ${q.name}`, (c) => c.bindQueue(q.name, UPLINK_EXCHANGE, key));
    }
    for (const b of topology.bindings) await attempt(`binding of ${b.queue}`, (c) => c.bindQueue(b.queue, b.exchange, b.routingKey));
  } finally {
    await ch.close().catch(() => {});
  }
}

/**
 * A channel on which `spec`'s queue is declared (with its uplink binding), or, when this
 * credential may not declare it, a fresh channel on which the queue was checked to exist.
 */
export async function declaredChannel(model: ChannelModel, spec: QueueSpec): Promise<Channel> {
  const ch = await scratchChannel(model);
  try {
    await declareQueue(ch, spec);
    return ch;
  } catch (err) {
    if (!isAccessRefused(err)) {
      await ch.close().catch(() => {});
      throw err;
    }
  }
  const checked = await scratchChannel(model);
  try {
    await checked.checkQueue(spec.name);
  } catch (err) {
    throw new Error(`queue ${spec.name} does not exist and this credential may not declare it (apply ops/rabbitmq/definitions.json): ${(err as Error).message}`);
  }
  return checked;
}
