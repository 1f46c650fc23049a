// The types a dashboard of dashboards/grafana/dashboards/ must satisfy, all Grafana's own:
// @grafana/schema is the dashboard schema Grafana publishes with each release (generated from
// its CUE kinds; pinned to the Grafana of docker-compose.yml), with the options of each panel
// plugin; the Prometheus query comes from Grafana's foundation SDK (generated from the same
// schemas). lab/tests/dashboards.rs writes each dashboard as a TypeScript literal that must
// `satisfies` these types and runs tsc: unknown keys, wrong types and missing required fields
// are errors.
import type { Dashboard, Panel } from '@grafana/schema';
import type * as bargauge from '@grafana/schema/dist/esm/raw/composable/bargauge/panelcfg/x/BarGaugePanelCfg_types.gen';
import type * as timeseries from '@grafana/schema/dist/esm/raw/composable/timeseries/panelcfg/x/TimeSeriesPanelCfg_types.gen';
import type * as prometheus from '@grafana/grafana-foundation-sdk/prometheus';

/** A type as JSON writes it: TypeScript's string enums become the union of their values. */
type Json<T> = T extends string
  ? `${T}`
  : T extends (infer U)[]
    ? Json<U>[]
    : T extends object
      ? { [K in keyof T]: Json<T[K]> }
      : T;

/** A Prometheus query (the SDK's marker method is no JSON). */
type PromQuery = Omit<prometheus.Dataquery, '_implementsDataqueryVariant'>;

/** The whole dashboard: panels by Grafana's generic panel model. */
export type GrafanaDashboard = Json<Dashboard>;

/** A panel of a plugin: its options (instead of the generic panel's open record), its field
 *  config, Prometheus queries. */
type PluginPanel<Options, FieldConfig = Record<string, unknown>> = Json<
  Omit<Panel<Options, FieldConfig>, 'options' | 'targets'> & { options: Options; targets: PromQuery[] }
>;

/** Each panel again, by its plugin's types; a panel type missing here is an error (add its
 *  types). */
export type Panels = {
  bargauge: PluginPanel<bargauge.Options>;
  timeseries: PluginPanel<timeseries.Options, timeseries.FieldConfig>;
};
