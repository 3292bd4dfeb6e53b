// The handlers of the demo pipeline. Each takes the previous stage's output as its input.
import { setTimeout as sleep } from "node:timers/promises";
import type { Payload, TaskContext } from "@dsat/sdk";

interface Doc {
  id: number;
  text: string;
}

/** Lower-cases and collapses white space. */
export function normalize(input: Payload): Doc {
  const d = input.json<Doc>();
  return { id: d.id, text: d.text.toLowerCase().replace(/\s+/g, " ").trim() };
}

/** Counts words and letters. */
export function count(input: Payload): Doc & { words: number; letters: number } {
  const d = input.json<Doc>();
  const words = d.text ? d.text.split(" ").length : 0;
  return { ...d, words, letters: d.text.replace(/[^a-z]/g, "").length };
}

/** Labels the text after a short wait (a stand-in for a call elsewhere); fails 2% of first attempts. */
export async function classify(input: Payload, ctx: TaskContext): Promise<unknown> {
  const d = input.json<Doc & { words: number; letters: number }>();
  await sleep(2 + (d.id % 5), undefined, { signal: ctx.signal });
  if (ctx.attempt === 1 && d.id % 50 === 7) throw new Error(`the classifier was busy for document ${d.id}`);
  const label = d.words <= 1 ? "tiny" : d.words <= 4 ? "short" : "long";
  return { id: d.id, words: d.words, letters: d.letters, label };
}
