import { sdNotify } from './index.js';

/**
 * systemd's notify protocol for a Type=notify service (georm@.service): READY=1 once the GMD serves
 * I/O, STATUS= lines for `systemctl status`, STOPPING=1 when a clean stop begins and WATCHDOG=1
 * pings while the event loop is healthy. Outside systemd (no NOTIFY_SOCKET) every call is a no-op,
 * so callers need no branches.
 */
export class SystemdNotifier {
  private timer: NodeJS.Timeout | null = null;
  private readonly send: (state: string) => boolean;
  private readonly env: NodeJS.ProcessEnv;

  constructor(opts: { send?: (state: string) => boolean; env?: NodeJS.ProcessEnv } = {}) {
    this.send = opts.send ?? sdNotify;
    this.env = opts.env ?? process.env;
  }

  /** True when systemd is listening (NOTIFY_SOCKET is set). */
  get enabled(): boolean { return !!this.env.NOTIFY_SOCKET; }

  /** READY=1 (and STATUS= when given); also starts the watchdog pings if the unit asks for them. */
  ready(status?: string): void {
    this.notify(status === undefined ? 'READY=1' : `READY=1\nSTATUS=${oneLine(status)}`);
    this.startWatchdog();
  }

  status(text: string): void { this.notify(`STATUS=${oneLine(text)}`); }

  /** STOPPING=1: systemd then waits (TimeoutStopSec) for the process to exit. Stops the pings. */
  stopping(status?: string): void {
    this.stopWatchdog();
    this.notify(status === undefined ? 'STOPPING=1' : `STOPPING=1\nSTATUS=${oneLine(status)}`);
  }

  /** RELOADING=1 … READY=1 around a configuration reload. */
  reloading(): void { this.notify('RELOADING=1'); }

  watchdog(): void { this.notify('WATCHDOG=1'); }

  /**
   * The ping period the unit asked for (half of WatchdogSec), or null when there is no watchdog or it
   * is meant for another process (WATCHDOG_PID).
   */
  watchdogIntervalMs(): number | null {
    const usec = Number(this.env.WATCHDOG_USEC);
    if (!Number.isFinite(usec) || usec <= 0) return null;
    const pid = this.env.WATCHDOG_PID;
    if (pid !== undefined && pid !== '' && Number(pid) !== process.pid) return null;
    return Math.max(1, Math.floor(usec / 2000));
  }

  /** Pings from a timer on the event loop: if the loop hangs, the pings stop and systemd acts. */
  startWatchdog(): void {
    const ms = this.watchdogIntervalMs();
    if (ms === null || this.timer || !this.enabled) return;
    this.timer = setInterval(() => this.watchdog(), ms);
    this.timer.unref();
  }

  stopWatchdog(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  private notify(state: string): void {
    if (!this.enabled) return;
    try {
      this.send(state);
    } catch {
      // A vanished notify socket must not take the GMD down; systemd will notice on its own.
    }
  }
}

function oneLine(s: string): string { return s.replace(/[\r\n]+/g, ' '); }

/** The process-wide notifier (one service, one notify socket). */
export const systemd = new SystemdNotifier();
