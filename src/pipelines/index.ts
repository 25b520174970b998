/** The built-in pipelines, by name. */
import { InvalidInputError } from '../core/errors.ts';
import type { Pipeline } from '../engine/pipeline.ts';
import { leads } from './leads.ts';
import { purchases } from './purchases.ts';

export const pipelines: Record<string, Pipeline> = { leads, purchases };

export function getPipeline(name: string): Pipeline {
  const p = Object.hasOwn(pipelines, name) ? pipelines[name] : undefined;
  if (!p) throw new InvalidInputError(`unknown pipeline ${JSON.stringify(name)} (available: ${Object.keys(pipelines).join(', ')})`);
  return p;
}
