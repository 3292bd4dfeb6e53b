// A Moleculer 0.14 broker on the TCP transporter with static peers on 127.0.0.1 (no UDP
// discovery), the JSON serializer, and no logger, metrics or tracing.
import { ServiceBroker } from "moleculer";

/** A node of the bench's Moleculer cluster. */
export interface MoleculerNode {
  readonly nodeID: string;
  readonly port: number;
}

/** Parses "id@port,id@port". */
export function parseNodes(s: string): MoleculerNode[] {
  return s
    .split(",")
    .filter(Boolean)
    .map((x) => {
      const [nodeID, port] = x.split("@");
      return { nodeID: nodeID as string, port: Number(port) };
    });
}

/** Creates (does not start) the broker of one node. */
export function createBroker(self: MoleculerNode, all: readonly MoleculerNode[]): ServiceBroker {
  return new ServiceBroker({
    nodeID: self.nodeID,
    namespace: "bench",
    logger: false,
    metrics: false,
    tracing: false,
    transporter: {
      type: "TCP",
      options: {
        udpDiscovery: false,
        port: self.port,
        urls: all.filter((n) => n.nodeID !== self.nodeID).map((n) => `127.0.0.1:${n.port}/${n.nodeID}`),
      },
    },
  });
}
