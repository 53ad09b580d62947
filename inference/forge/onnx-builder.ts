/**
 * A thin graph builder over `onnx-proto`: named inputs/outputs, raw-data initializers and
 * auto-named nodes, serialised as an IR 8 / opset 17 ModelProto.
 */
import onnxProto from 'onnx-proto';

const { onnx } = onnxProto;

/** ONNX element types used here (TensorProto.DataType). */
export const DT = { FLOAT: 1, INT64: 7, BOOL: 9 } as const;
export type ElemType = (typeof DT)[keyof typeof DT];

type AttrValue = number | number[] | string | { float: number };

/** Builds one graph; every method appends to it. */
export class GraphBuilder {
  private readonly nodes: InstanceType<typeof onnx.NodeProto>[] = [];
  private readonly inits: InstanceType<typeof onnx.TensorProto>[] = [];
  private readonly inputs: InstanceType<typeof onnx.ValueInfoProto>[] = [];
  private readonly outputs: InstanceType<typeof onnx.ValueInfoProto>[] = [];
  private readonly constCache = new Map<string, string>();
  private counter = 0;

  constructor(private readonly name: string) {}

  /** Declares a graph input; string dims are symbolic (e.g. "batch_size"). */
  input(name: string, elemType: ElemType, dims: Array<number | string>): string {
    this.inputs.push(valueInfo(name, elemType, dims));
    return name;
  }

  /** Declares a graph output (the tensor must be produced by some node under that name). */
  output(name: string, elemType: ElemType, dims: Array<number | string>): void {
    this.outputs.push(valueInfo(name, elemType, dims));
  }

  /** Adds a float32 initializer (little-endian raw bytes). */
  floatInit(name: string, dims: number[], data: Float32Array): string {
    this.inits.push(tensor(name, DT.FLOAT, dims, rawBytes(data)));
    return name;
  }

  /** A shared int64 constant initializer (1-D unless `scalar`). */
  int64Const(values: number[], scalar = false): string {
    const key = `i64:${scalar ? 's' : 'v'}:${values.join(',')}`;
    let name = this.constCache.get(key);
    if (!name) {
      name = `const_i64_${this.constCache.size}`;
      const data = BigInt64Array.from(values.map((v) => BigInt(v)));
      this.inits.push(tensor(name, DT.INT64, scalar ? [] : [values.length], rawBytes(data)));
      this.constCache.set(key, name);
    }
    return name;
  }

  /** A shared float32 constant initializer (scalar unless more than one value). */
  floatConst(values: number[]): string {
    const key = `f32:${values.join(',')}`;
    let name = this.constCache.get(key);
    if (!name) {
      name = `const_f32_${this.constCache.size}`;
      this.inits.push(tensor(name, DT.FLOAT, values.length === 1 ? [] : [values.length], rawBytes(Float32Array.from(values))));
      this.constCache.set(key, name);
    }
    return name;
  }

  /**
   * Appends a node. Returns its output names (auto-named unless `outputs` names them).
   * Attribute values: integer → INT, number[] → INTS, string → STRING, {float} → FLOAT.
   */
  node(opType: string, inputs: string[], attrs: Record<string, AttrValue> = {}, outputs?: string[] | number): string[] {
    const outNames =
      Array.isArray(outputs) ? outputs : Array.from({ length: outputs ?? 1 }, (_, i) => `${opType.toLowerCase()}_${this.counter}_${i}`);
    const attribute = Object.entries(attrs).map(([name, v]) => attr(name, v));
    this.nodes.push(onnx.NodeProto.create({ name: `${opType}_${this.counter}`, opType, input: inputs, output: outNames, attribute }));
    this.counter++;
    return outNames;
  }

  /** Single-output shorthand for `node`. */
  op(opType: string, inputs: string[], attrs: Record<string, AttrValue> = {}, output?: string): string {
    return this.node(opType, inputs, attrs, output ? [output] : 1)[0];
  }

  /** Serialises the model (IR 8, default-domain opset 17). */
  toBytes(docString: string): Uint8Array {
    const graph = onnx.GraphProto.create({
      name: this.name,
      node: this.nodes,
      initializer: this.inits,
      input: this.inputs,
      output: this.outputs,
    });
    const model = onnx.ModelProto.create({
      irVersion: 8,
      opsetImport: [onnx.OperatorSetIdProto.create({ domain: '', version: 17 })],
      producerName: 'wisp-forge',
      producerVersion: '1',
      docString,
      graph,
    });
    return onnx.ModelProto.encode(model).finish();
  }
}

function rawBytes(data: Float32Array | BigInt64Array): Uint8Array {
  return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
}

function tensor(name: string, dataType: number, dims: number[], raw: Uint8Array) {
  return onnx.TensorProto.create({ name, dataType, dims, rawData: raw });
}

function valueInfo(name: string, elemType: number, dims: Array<number | string>) {
  const dim = dims.map((d) => (typeof d === 'number' ? { dimValue: d } : { dimParam: d }));
  return onnx.ValueInfoProto.create({
    name,
    type: onnx.TypeProto.create({ tensorType: { elemType, shape: { dim } } }),
  });
}

function attr(name: string, v: AttrValue) {
  const T = onnx.AttributeProto.AttributeType;
  if (typeof v === 'string') return onnx.AttributeProto.create({ name, type: T.STRING, s: new TextEncoder().encode(v) });
  if (Array.isArray(v)) return onnx.AttributeProto.create({ name, type: T.INTS, ints: v });
  if (typeof v === 'object') return onnx.AttributeProto.create({ name, type: T.FLOAT, f: v.float });
  return onnx.AttributeProto.create({ name, type: T.INT, i: v });
}
