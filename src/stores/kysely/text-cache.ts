/**
 * The statement texts a store builds as strings, kept by a key that
 * describes their shape: a workload repeats a few shapes, so each text is
 * built once (and, prepared by the driver, parsed once per connection).
 *
 * @module
 */

/** Texts by key, at most `max`: past it the cache starts over (keys beyond a workload's few are not expected, and a text is cheap to rebuild). */
export class TextCache {
  private readonly texts = new Map<string, string>();

  constructor(private readonly max: number) {}

  /** The text for `key`, built by `build` the first time. */
  get(key: string, build: () => string): string {
    let text = this.texts.get(key);
    if (text === undefined) {
      text = build();
      if (this.texts.size >= this.max) this.texts.clear();
      this.texts.set(key, text);
    }
    return text;
  }
}
