/**
 * The Postgres store's estimate of the database clock between readings. Each
 * reading bounds the offset (database clock minus local clock) by its round
 * trip; the estimate must never be ahead of the database, whatever part of
 * the round trip the statement spent waiting.
 */
import { describe, expect, it } from 'vitest';
import { CLOCK_READING_TTL_MS, DatabaseClockEstimate } from '../../src/stores/kysely/database-clock.js';

describe('DatabaseClockEstimate', () => {
  it('is not ahead of the database after a reading taken at the end of a long round trip', () => {
    const clock = new DatabaseClockEstimate();
    // Sent at local 0, queued 70 ms for a connection, read the database clock (1,070) and answered at once.
    clock.observe(1_070, 0, 70);
    // The database shows 1,070 at local 70: the middle of the round trip would have said 1,105.
    expect(clock.at(70)).toBe(1_070);
    expect(clock.at(1_070)).toBe(2_070);
  });

  it('keeps the highest low bound of the recent readings', () => {
    const clock = new DatabaseClockEstimate();
    clock.observe(1_070, 0, 70); // offset in [1,000, 1,070]
    clock.observe(1_101, 100, 102); // offset in [999, 1,001]
    expect(clock.at(200)).toBe(1_200);
    clock.observe(1_210, 200, 210); // offset in [1,000, 1,010]: still 1,000
    expect(clock.at(300)).toBe(1_300);
  });

  it('takes the newest reading alone when the readings contradict each other (a clock was stepped)', () => {
    const clock = new DatabaseClockEstimate();
    clock.observe(1_005, 0, 10); // offset in [995, 1,005]
    clock.observe(5_021, 20, 22); // offset in [4,999, 5,001]: the database clock jumped
    expect(clock.at(30)).toBe(5_029);
    // And the newest counts alone: a reading consistent with it only tightens from there.
    clock.observe(5_041, 40, 41); // offset in [5,000, 5,001]
    expect(clock.at(50)).toBe(5_050);
  });

  it('forgets readings older than the trusted period', () => {
    const clock = new DatabaseClockEstimate();
    clock.observe(1_001, 0, 2); // offset in [999, 1,001]
    // Within the period, a looser reading does not lower the estimate.
    clock.observe(2_050, 1_000, 1_100); // offset in [950, 1,050]
    expect(clock.at(1_100)).toBe(2_099);
    const late = new DatabaseClockEstimate();
    late.observe(1_001, 0, 2);
    late.observe(CLOCK_READING_TTL_MS + 1_190, CLOCK_READING_TTL_MS + 100, CLOCK_READING_TTL_MS + 200); // offset in [990, 1,090]
    // The first reading has expired: the second alone says 990 (with the first, 999).
    expect(late.at(CLOCK_READING_TTL_MS + 200)).toBe(CLOCK_READING_TTL_MS + 200 + 990);
  });

  it('knows the time only within the trusted period after a reading, and not when the local clock went back', () => {
    const clock = new DatabaseClockEstimate();
    expect(clock.knows(0)).toBe(false);
    clock.observe(1_000, 10, 12);
    expect(clock.knows(12)).toBe(true);
    expect(clock.knows(12 + CLOCK_READING_TTL_MS - 1)).toBe(true);
    expect(clock.knows(12 + CLOCK_READING_TTL_MS)).toBe(false);
    expect(clock.knows(5)).toBe(false);
  });

  it('tells how far the database clock may be ahead of the estimate: the width of the readings\' common bound', () => {
    const clock = new DatabaseClockEstimate();
    expect(clock.uncertainty()).toBe(0);
    clock.observe(1_070, 0, 70); // offset in [1,000, 1,070]
    expect(clock.uncertainty()).toBe(70);
    clock.observe(1_101, 100, 102); // offset in [999, 1,001]: together [1,000, 1,001]
    expect(clock.at(200)).toBe(1_200);
    expect(clock.uncertainty()).toBe(1);
    // The database clock at local 200 lies in [estimate, estimate + uncertainty].
    expect(clock.at(200) + clock.uncertainty()).toBe(200 + 1_001);
    clock.observe(5_021, 120, 125); // offset in [4,896, 4,901]: contradicts the others, so it counts alone
    expect(clock.uncertainty()).toBe(5);
  });
});
