/**
 * A circuit breaker for the scheduled sync: after `failureThreshold` failed syncs in a row
 * the provider is left alone for a cool-down (doubling up to `maxCooldownMs` while trial
 * syncs keep failing), so a down provider is not hammered and logs stay readable.
 * closed: syncs run; open: syncs are skipped; half-open: the cool-down ended, one trial runs.
 */
export type BreakerState = 'closed' | 'open' | 'half-open';

/** First cool-down when none is given (30 s). */
export const DEFAULT_COOLDOWN_MS = 30_000;

export interface CircuitBreakerOptions {
  /** Consecutive failures that open the circuit (default 3). */
  failureThreshold?: number;
  /** First cool-down (default 30 s; the scheduler makes it at least two of its intervals). */
  cooldownMs?: number;
  /** Longest cool-down (default 10 min, and never shorter than the first). */
  maxCooldownMs?: number;
  now?: () => number;
}

export class CircuitBreaker {
  private failures = 0;
  private openedAt = 0;
  private cooldown: number;
  private readonly threshold: number;
  private readonly baseCooldown: number;
  private readonly maxCooldown: number;
  private readonly now: () => number;

  constructor(options: CircuitBreakerOptions = {}) {
    this.threshold = options.failureThreshold ?? 3;
    this.baseCooldown = options.cooldownMs ?? DEFAULT_COOLDOWN_MS;
    this.maxCooldown = Math.max(options.maxCooldownMs ?? 600_000, this.baseCooldown);
    this.cooldown = this.baseCooldown;
    this.now = options.now ?? Date.now;
  }

  get state(): BreakerState {
    if (this.failures < this.threshold) return 'closed';
    return this.now() - this.openedAt >= this.cooldown ? 'half-open' : 'open';
  }

  /** Whether a sync may run now. */
  allow(): boolean {
    return this.state !== 'open';
  }

  success(): void {
    this.failures = 0;
    this.cooldown = this.baseCooldown;
  }

  failure(): void {
    const wasHalfOpen = this.state === 'half-open';
    this.failures += 1;
    if (wasHalfOpen) this.cooldown = Math.min(this.cooldown * 2, this.maxCooldown);
    if (this.failures >= this.threshold) this.openedAt = this.now();
  }
}
