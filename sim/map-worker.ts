/**
 * The regime map's worker thread: runs the (cell, policy) capacity searches it is sent and
 * posts back their results (plain JSON).
 */
import { parentPort } from 'node:worker_threads';
import { runMapTask, type MapTask } from './map.ts';
import { errorCode } from '../common/errors.ts';

const port = parentPort;
if (!port) throw new Error('sim/map-worker.ts runs as a worker thread of sim/map-runner.ts');
port.on('message', (m: { id: number; task: MapTask }) => {
  try {
    port.postMessage({ id: m.id, result: runMapTask(m.task) });
  } catch (e) {
    port.postMessage({ id: m.id, error: { message: (e as Error).message, code: errorCode(e) } });
  }
});
