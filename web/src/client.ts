// The gRPC-Web client: one transport to Envoy, typed by the generated stubs.
import { createClient, type Client } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { DiscountService } from "./gen/discount/v1/discount_service_pb.js";

export type DiscountClient = Client<typeof DiscountService>;

export interface PageConfig {
  /** Base URL of Envoy's gRPC-Web listener, e.g. http://127.0.0.1:8081 */
  envoyUrl: string;
  /** Brand to prefill in both views. */
  brand: string;
}

/**
 * Where Envoy is: `?envoy=` in the page URL, else `config.json` next to the page (written by
 * `discount dev-stack`), else port 8081 on the page's host.
 */
export async function loadConfig(): Promise<PageConfig> {
  const params = new URLSearchParams(location.search);
  let fromFile: Partial<PageConfig> = {};
  try {
    const response = await fetch("config.json", { cache: "no-store" });
    if (response.ok) fromFile = (await response.json()) as Partial<PageConfig>;
  } catch {
    // No config.json: use the defaults below.
  }
  const envoyUrl = params.get("envoy") ?? fromFile.envoyUrl ?? `${location.protocol}//${location.hostname}:8081`;
  const brand = params.get("brand") ?? fromFile.brand ?? "";
  return { envoyUrl: envoyUrl.replace(/\/+$/, ""), brand };
}

export function makeClient(envoyUrl: string): DiscountClient {
  return createClient(DiscountService, createGrpcWebTransport({ baseUrl: envoyUrl }));
}
