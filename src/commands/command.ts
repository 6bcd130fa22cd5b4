/** One CLI verb: the words that name it, its help text, and what it does. */
export interface Command {
  /** e.g. ['serve'] or ['config', 'check']. */
  words: readonly string[];
  /** One line for the main help. */
  summary: string;
  /** Full help, printed by `--help` and `wa-egress help WORDS`. */
  help: string;
  run(args: string[]): Promise<void> | void;
}

/** Print a message (and optionally help) on stderr and exit 1. */
export function fail(message: string, help?: string): never {
  process.stderr.write(`wa-egress: ${message}\n${help ? `\n${help}` : ''}`);
  process.exit(1);
}
