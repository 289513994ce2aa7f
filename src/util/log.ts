import { pino, type Logger } from 'pino';

export type { Logger };

/**
 * The process logger: JSON lines on stderr (journald under systemd), level from GEORM_LOG_LEVEL.
 * stdout stays free for command output (the demo's JSON line, `--json` results).
 */
export function createLogger(name: string, level = process.env.GEORM_LOG_LEVEL ?? 'info'): Logger {
  return pino({ name, level, base: { pid: process.pid } }, pino.destination({ dest: 2, sync: true }));
}

/** A logger that drops everything, for libraries used without one. */
export const silentLogger: Logger = pino({ level: 'silent' });
