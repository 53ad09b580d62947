/**
 * VerifierWorker: one target model and its sessions' KV caches.
 *
 *   starting ─(model loaded)─▶ ready ─(BATCH)─▶ executing ─(done)─▶ ready …   STOP ─▶ stopped
 *
 * Batches that arrive while one executes wait in order (the broker's prefetch normally keeps
 * that to none). Loading the model and executing a batch (prefill, verify, close, evict) are
 * provided promise actors; reporting is a provided action. Idle sessions are evicted on TICK.
 */
import { assign, fromPromise, setup } from 'xstate';
import type { VerifyBatch } from '../protocol/messages.ts';
import type { BatchShape } from '../policies/types.ts';

export interface WorkerModelSummary {
  model: string;
  vocabSize: number;
  maxPositions: number;
}

export interface BatchReport {
  batchId: string;
  shapes: BatchShape[];
  /** A pass run as several model calls, each timed (what a padded estimator learns, part by part). */
  parts?: { shapes: BatchShape[]; actualMs: number }[];
  /** Model time, ms (what the estimator learns). */
  actualMs: number;
  /** Time the worker was held, ms: the model plus sampling, ledger writes and publishing replies. */
  busyMs?: number;
  /** When it started, ms of the worker's clock (orders the reports; spacing of decode steps). */
  startedAtMs?: number;
  predictedMs: number;
  sessions: number;
  kvBytes: number;
  /** Centralized sessions still decoding on this worker (continuous batching keeps stepping). */
  decodeActive: number;
}

/**
 * How long a worker with sessions decoding waits for a batch the scheduler said would follow
 * (`VerifyBatch.followUp`) before it runs a decode step alone, ms. The follow-up is one status and
 * one batch message away (a millisecond or two here); waiting for it puts the step in the same
 * pass as the next prompt chunk, where running it first would cost a whole pass per chunk.
 */
export const FOLLOW_UP_HOLD_MS = 20;

/**
 * The worker's mean time between a decoded session's tokens (WorkerStatus.decodeTpotMs) after a
 * pass whose decoded sessions waited `meanIntervalMs` on average since their previous token: an
 * EWMA, the first interval as it is. The live executor and the simulator's worker both keep it.
 */
export function nextDecodeTpotMs(previousMs: number | undefined, meanIntervalMs: number): number {
  return previousMs === undefined ? meanIntervalMs : 0.8 * previousMs + 0.2 * meanIntervalMs;
}

/** Whether a worker that just finished `batch` waits for the next one rather than step alone. */
export function holdsForFollowUp(batch: Pick<VerifyBatch, 'followUp'> | null, queued: number, decodeActive: number): boolean {
  return batch?.followUp === true && queued === 0 && decodeActive > 0;
}

/**
 * Whether the decode step of the sessions a worker decodes shares `batch`'s pass: with prompt
 * chunks (chunked prefill) or verifications (the adaptive policy, whose sessions are served
 * either way on one worker) — but not a pass of whole prompts, which runs alone as it always did.
 */
export function stepSharesPass(batch: Pick<VerifyBatch, 'items'>): boolean {
  return batch.items.some((i) => i.chunk !== undefined || i.request.type === 'verify');
}

/** Id prefix of a centralized continuous-batching decode step's report (not a dispatched batch). */
export const DECODE_STEP_PREFIX = 'step-';

/** Whether a report is of a decode step rather than a batch the scheduler dispatched. */
export function isDecodeStep(report: Pick<BatchReport, 'batchId'>): boolean {
  return report.batchId.startsWith(DECODE_STEP_PREFIX);
}

export interface VerifierWorkerInput {
  workerId: string;
  idleEvictMs: number;
}

export interface VerifierWorkerContext extends VerifierWorkerInput {
  model: WorkerModelSummary | null;
  queue: VerifyBatch[];
  current: VerifyBatch | null;
  batchesDone: number;
  decodeActive: number;
  /** The batch just done said another follows (and sessions are decoding): hold, do not step. */
  awaitsFollowUp: boolean;
  lastError: string | null;
}

export type VerifierWorkerEvent =
  | { type: 'BATCH'; batch: VerifyBatch }
  | { type: 'TICK'; nowMs: number }
  | { type: 'STOP' };

const notProvided = (name: string) => () => {
  throw new Error(`VerifierWorker: ${name} was not provided by the adapter`);
};

export const verifierWorkerMachine = setup({
  types: {
    context: {} as VerifierWorkerContext,
    events: {} as VerifierWorkerEvent,
    input: {} as VerifierWorkerInput,
  },
  actors: {
    loadModel: fromPromise<WorkerModelSummary, { workerId: string }>(async () => {
      throw new Error('VerifierWorker: loadModel was not provided');
    }),
    executeBatch: fromPromise<BatchReport, { batch: VerifyBatch }>(async () => {
      throw new Error('VerifierWorker: executeBatch was not provided');
    }),
    /** One continuous-batching step: every active centralized session decodes one token. */
    decodeStep: fromPromise<BatchReport, { workerId: string }>(async () => {
      throw new Error('VerifierWorker: decodeStep was not provided');
    }),
  },
  actions: {
    /** Tells the scheduler this worker is ready, with the last batch's cost when there is one. */
    reportReady: notProvided('reportReady') as (args: unknown, params: { model: WorkerModelSummary; report: BatchReport | null }) => void,
    /** A batch failed as a whole (a bug or a broken model); its members get typed errors. */
    reportBatchFailed: notProvided('reportBatchFailed') as (args: unknown, params: { batch: VerifyBatch; message: string }) => void,
    evictIdle: notProvided('evictIdle') as (args: unknown, params: { nowMs: number; idleEvictMs: number }) => void,
    enqueue: assign({
      queue: ({ context, event }) => (event.type === 'BATCH' ? [...context.queue, event.batch] : context.queue),
    }),
  },
  guards: {
    hasQueued: ({ context }) => context.queue.length > 0,
    decoding: ({ context }) => context.decodeActive > 0,
    awaitsFollowUp: ({ context }) => context.awaitsFollowUp,
  },
}).createMachine({
  id: 'verifierWorker',
  context: ({ input }) => ({ ...input, model: null, queue: [], current: null, batchesDone: 0, decodeActive: 0, awaitsFollowUp: false, lastError: null }),
  initial: 'starting',
  on: {
    STOP: { target: '.stopped' },
  },
  states: {
    starting: {
      on: { BATCH: { actions: 'enqueue' } },
      invoke: {
        src: 'loadModel',
        input: ({ context }) => ({ workerId: context.workerId }),
        onDone: {
          target: 'ready',
          actions: [
            assign({ model: ({ event }) => event.output }),
            { type: 'reportReady', params: ({ event }) => ({ model: event.output, report: null }) },
          ],
        },
        onError: {
          target: 'failed',
          actions: assign({ lastError: ({ event }) => String((event.error as Error)?.message ?? event.error) }),
        },
      },
    },
    ready: {
      // Queued batches first (new sessions and verifications), then a decode step if any is active.
      always: [
        { guard: 'hasQueued', target: 'executing' },
        { guard: 'awaitsFollowUp', target: 'holding' },
        { guard: 'decoding', target: 'stepping' },
      ],
      on: {
        BATCH: { target: 'executing', actions: 'enqueue' },
        TICK: {
          actions: { type: 'evictIdle', params: ({ context, event }) => ({ nowMs: event.nowMs, idleEvictMs: context.idleEvictMs }) },
        },
      },
    },
    executing: {
      entry: assign({ current: ({ context }) => context.queue[0] ?? null, queue: ({ context }) => context.queue.slice(1) }),
      on: { BATCH: { actions: 'enqueue' } },
      invoke: {
        src: 'executeBatch',
        input: ({ context }) => ({ batch: context.current! }),
        onDone: {
          target: 'ready',
          actions: [
            assign({
              batchesDone: ({ context }) => context.batchesDone + 1,
              awaitsFollowUp: ({ context, event }) => holdsForFollowUp(context.current, context.queue.length, event.output.decodeActive),
              current: null,
              decodeActive: ({ event }) => event.output.decodeActive,
            }),
            { type: 'reportReady', params: ({ context, event }) => ({ model: context.model!, report: event.output }) },
          ],
        },
        onError: {
          target: 'ready',
          actions: [
            { type: 'reportBatchFailed', params: ({ context, event }) => ({ batch: context.current!, message: String((event.error as Error)?.message ?? event.error) }) },
            assign({ current: null, lastError: ({ event }) => String((event.error as Error)?.message ?? event.error) }),
            { type: 'reportReady', params: ({ context }) => ({ model: context.model!, report: null }) },
          ],
        },
      },
    },
    /** Sessions are decoding and the scheduler said a batch follows: wait for it, not too long. */
    holding: {
      entry: assign({ awaitsFollowUp: false }),
      on: { BATCH: { target: 'executing', actions: 'enqueue' } },
      after: { [FOLLOW_UP_HOLD_MS]: { target: 'ready' } },
    },
    stepping: {
      on: { BATCH: { actions: 'enqueue' } },
      invoke: {
        src: 'decodeStep',
        input: ({ context }) => ({ workerId: context.workerId }),
        onDone: { target: 'ready', actions: assign({ decodeActive: ({ event }) => event.output.decodeActive }) },
        onError: {
          target: 'ready',
          actions: assign({ decodeActive: 0, lastError: ({ event }) => String((event.error as Error)?.message ?? event.error) }),
        },
      },
    },
    failed: { type: 'final' },
    stopped: { type: 'final' },
  },
});
