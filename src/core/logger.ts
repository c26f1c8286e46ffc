/** The logging shape sagaline uses; `console` fits, and so do pino and winston. */
export interface Logger {
  debug(message: string, context?: Record<string, unknown>): void;
  info(message: string, context?: Record<string, unknown>): void;
  warn(message: string, context?: Record<string, unknown>): void;
  error(message: string, context?: Record<string, unknown>): void;
}

/** Discards everything. The default, so that a library stays quiet unless asked. */
export const silentLogger: Logger = {
  debug: () => {},
  info: () => {},
  warn: () => {},
  error: () => {},
};

/** Returns a logger that adds `context` to every call. */
export function childLogger(logger: Logger, context: Record<string, unknown>): Logger {
  return {
    debug: (m, c) => logger.debug(m, { ...context, ...c }),
    info: (m, c) => logger.info(m, { ...context, ...c }),
    warn: (m, c) => logger.warn(m, { ...context, ...c }),
    error: (m, c) => logger.error(m, { ...context, ...c }),
  };
}
