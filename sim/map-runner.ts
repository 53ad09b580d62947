/**
 * Runs the regime map's tasks (sim/map.ts) on `jobs` worker threads, or in this thread when
 * jobs is 1. Results come back in task order whatever order the threads finish in.
 */
import { Worker } from 'node:worker_threads';
import { WispError } from '../common/errors.ts';
import { runMapTask, type MapTask, type MapTaskResult } from './map.ts';

export interface MapProgress {
  done: number;
  total: number;
  task: MapTask;
  wallMs: number;
}

export async function runMapTasks(tasks: readonly MapTask[], jobs: number, onProgress?: (p: MapProgress) => void): Promise<MapTaskResult[]> {
  const results: MapTaskResult[] = new Array(tasks.length);
  let done = 0;
  if (jobs <= 1 || tasks.length <= 1) {
    for (const [i, task] of tasks.entries()) {
      const t0 = performance.now();
      results[i] = runMapTask(task);
      onProgress?.({ done: ++done, total: tasks.length, task, wallMs: performance.now() - t0 });
    }
    return results;
  }
  let next = 0;
  const threads = Array.from({ length: Math.min(jobs, tasks.length) }, () => new Worker(new URL('./map-worker.mjs', import.meta.url)));
  try {
    await Promise.all(
      threads.map(
        (w) =>
          new Promise<void>((resolve, reject) => {
            let started = 0;
            const give = (): void => {
              if (next >= tasks.length) return resolve();
              const id = next++;
              started = performance.now();
              w.postMessage({ id, task: tasks[id] });
            };
            w.on('message', (m: { id: number; result?: MapTaskResult; error?: { message: string; code?: string } }) => {
              if (m.error) return reject(new WispError(m.error.code ?? 'map_task_failed', m.error.message));
              results[m.id] = m.result!;
              onProgress?.({ done: ++done, total: tasks.length, task: tasks[m.id], wallMs: performance.now() - started });
              give();
            });
            w.on('error', reject);
            w.on('exit', (code) => (code === 0 ? resolve() : reject(new WispError('map_task_failed', `a map worker thread exited with code ${code}`))));
            give();
          }),
      ),
    );
  } finally {
    await Promise.all(threads.map((w) => w.terminate()));
  }
  return results;
}
