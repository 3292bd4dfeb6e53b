import {
  create,
  createFileRegistry,
  type DescField,
  type DescMessage,
  type DescMethod,
  fromBinary,
  isFieldSet,
  type MessageShape,
} from "@bufbuild/protobuf";
import { FieldDescriptorProto_Label, FieldDescriptorProto_Type, FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import { type Load, LoadSchema, type Member, MemberSchema, type Transition, transportTo, WorkerService } from "@dsat/sdk";
import { createClient } from "@connectrpc/connect";
import { decodeTransition } from "../common/transition-decoding.ts";

// The router reads a worker's ProcessResponses (its transitions, in batches) on the hot path.
// Decoded by protobuf-es's generic reader through the connect client, they were about a
// fifth of what the router allocated: a [number, wire type] pair per tag, a create() per
// message (each Transition, its Timestamp, its TaskError), every string. So the router reads
// them as the same bytes under another schema, ProcessResponseWire, whose fields hold each
// transition, the load and the hello undecoded; it then decodes the transitions by hand
// (transition-decoding.ts, shared with StatusService's Report) and the rare load and hello
// with fromBinary. A message field and a bytes field have the same wire format, so this is
// the same protocol: nothing changes for the worker.

/**
 * dsat.v1.ProcessResponse as the router reads it: `transitions` (1), `load` (2) and `hello`
 * (3) as bytes. proto2, so that a load or hello sent empty (every field at its default) is
 * still told from one not sent.
 */
const wireFile = create(FileDescriptorProtoSchema, {
  name: "dsat/router/process_response_wire.proto",
  package: "dsat.router",
  syntax: "proto2",
  messageType: [
    {
      name: "ProcessResponseWire",
      field: [
        { name: "transitions", number: 1, label: FieldDescriptorProto_Label.REPEATED, type: FieldDescriptorProto_Type.BYTES },
        { name: "load", number: 2, label: FieldDescriptorProto_Label.OPTIONAL, type: FieldDescriptorProto_Type.BYTES },
        { name: "hello", number: 3, label: FieldDescriptorProto_Label.OPTIONAL, type: FieldDescriptorProto_Type.BYTES },
      ],
    },
  ],
});

export const ProcessResponseWireSchema = createFileRegistry(wireFile, () => undefined).getMessage(
  "dsat.router.ProcessResponseWire",
) as DescMessage;

type Wire = MessageShape<typeof ProcessResponseWireSchema> & { transitions: Uint8Array[]; load: Uint8Array; hello: Uint8Array };

function fieldOf(no: number): DescField {
  const f = ProcessResponseWireSchema.fields.find((x) => x.number === no);
  if (!f) throw new Error(`ProcessResponseWire has no field ${no}`);
  return f;
}
const LOAD_FIELD = fieldOf(2);
const HELLO_FIELD = fieldOf(3);

/** A worker's ProcessResponse, as the router uses it. */
export interface WorkerResponse {
  readonly hello: Member | undefined;
  readonly load: Load | undefined;
  readonly transitions: Transition[];
}

/** Decodes a ProcessResponse read as ProcessResponseWire. */
export function decodeWorkerResponse(message: MessageShape<typeof ProcessResponseWireSchema>): WorkerResponse {
  const wire = message as Wire;
  const transitions = wire.transitions.map(decodeTransition);
  const load = isFieldSet(message, LOAD_FIELD) ? fromBinary(LoadSchema, wire.load) : undefined;
  const hello = isFieldSet(message, HELLO_FIELD) ? fromBinary(MemberSchema, wire.hello) : undefined;
  return { hello, load, transitions };
}

/** WorkerService.Process, its responses read as ProcessResponseWire. */
const processWire: DescMethod = { ...WorkerService.method.process, output: ProcessResponseWireSchema } as DescMethod;

/** The Process call of a worker at `address`: the same stream as WorkerService's, its responses read as ProcessResponseWire. */
export function processClient(address: string) {
  const client = createClient({ ...WorkerService, methods: [processWire] } as typeof WorkerService, transportTo(address));
  return client.process as unknown as (
    requests: Parameters<typeof client.process>[0],
    options?: Parameters<typeof client.process>[1],
  ) => AsyncIterable<MessageShape<typeof ProcessResponseWireSchema>>;
}
