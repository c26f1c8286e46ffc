/**
 * When a Postgres store analyzes its tables: each time they have doubled
 * since the last analysis, as far as the store knows.
 *
 * Postgres keeps one plan per prepared statement and makes it again only
 * when a table's statistics change. Autovacuum refreshes them at most once
 * per `autovacuum_naptime` (a minute by default), so in a young database a
 * plan made while the tables held a few hundred rows is kept while they grow
 * tenfold. Analyzing at each doubling keeps every plan made for a size within
 * a factor of two of the tables' size. The size starts from the planner's own
 * estimate (`pg_class.reltuples` of the workflow table), read once in the
 * background, and grows by one per create of this store: a store opened on a
 * large table analyzes only once it alone has doubled it.
 *
 * @module
 */

/** The creates after which a store on an empty (or never analyzed) table first analyzes. */
export const FIRST_ANALYZE_AT = 100;

/** The database work {@link TableGrowth} asks for. */
export interface TableGrowthRuns {
  /** The planner's estimate of the workflow table's rows (0 when never analyzed). */
  estimate(): Promise<number>;
  /** `ANALYZE` of the store's tables. */
  analyze(): Promise<void>;
}

/** Counts a store's creates and starts `ANALYZE` in the background at each doubling. */
export class TableGrowth {
  /** Workflows in the table as far as the store knows; undefined until the estimate is read. */
  private size: number | undefined;
  /** Creates counted before the estimate was read. */
  private early = 0;
  /** The size at which to analyze next. */
  private next = 0;
  private estimating: Promise<void> | undefined;
  private analyzing: Promise<void> | undefined;

  constructor(private readonly runs: TableGrowthRuns) {}

  /** Counts one create that inserted a workflow. */
  created(): void {
    if (this.size === undefined) {
      this.early++;
      this.estimating ??= this.runs.estimate().then(
        (rows) => this.start(rows),
        // Unknown: counted from zero, so the first analysis comes early rather than never.
        () => this.start(0),
      );
      return;
    }
    this.size++;
    this.check();
  }

  /** Resolves once no estimate or `ANALYZE` is running. */
  async idle(): Promise<void> {
    await this.estimating;
    await this.analyzing;
  }

  private start(rows: number): void {
    const known = Number.isFinite(rows) && rows > 0 ? Math.round(rows) : 0;
    this.size = known + this.early;
    this.next = Math.max(FIRST_ANALYZE_AT, 2 * known);
    this.check();
  }

  private check(): void {
    const size = this.size!;
    if (size < this.next || this.analyzing) return;
    this.next = 2 * size;
    this.analyzing = this.runs
      .analyze()
      .then(
        () => undefined,
        // Best effort: the next doubling tries again.
        () => undefined,
      )
      .finally(() => {
        this.analyzing = undefined;
      });
  }
}
