package dev.switchyard.bench;

import java.io.ByteArrayOutputStream;
import java.io.File;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.util.HashMap;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.CountDownLatch;

import org.apache.avro.Schema;
import org.apache.avro.generic.GenericData;
import org.apache.avro.generic.GenericDatumReader;
import org.apache.avro.generic.GenericDatumWriter;
import org.apache.avro.generic.GenericRecord;
import org.apache.avro.io.BinaryDecoder;
import org.apache.avro.io.BinaryEncoder;
import org.apache.avro.io.DecoderFactory;
import org.apache.avro.io.EncoderFactory;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.Topology;
import org.apache.kafka.streams.processor.api.Processor;
import org.apache.kafka.streams.processor.api.ProcessorContext;
import org.apache.kafka.streams.processor.api.Record;

/**
 * The work of two Switchyard processors, in Kafka Streams' Processor API, for `make bench`:
 *
 * <ul>
 *   <li>{@code pass}: decode each Confluent-framed Avro record (0x00, schema id, Avro binary) and
 *       encode it again unchanged, as Switchyard's pass-through processor does;
 *   <li>{@code project}: grafana-projector's work: decode a SensorReading, drop its timestamp
 *       field (a reading without a value is skipped), encode a GrafanaReading framed with its
 *       schema id, and make the record's time the sensor's time.
 * </ul>
 *
 * <p>Arguments are {@code key=value}: bootstrap, application-id, input, output, mode,
 * guarantee (at_least_once or exactly_once_v2), commit-interval-ms, input-schema (an .avsc
 * file), output-schema and output-schema-id (for project), and optionally linger-ms (the
 * producer's; Kafka Streams' own default otherwise). It runs until SIGTERM.
 */
public final class StreamsBench {
  private StreamsBench() {}

  public static void main(String[] args) throws Exception {
    Map<String, String> arg = new HashMap<>();
    for (String a : args) {
      int eq = a.indexOf('=');
      if (eq < 1) {
        throw new IllegalArgumentException("expected key=value, got " + a);
      }
      arg.put(a.substring(0, eq), a.substring(eq + 1));
    }
    String mode = required(arg, "mode");
    Schema input = new Schema.Parser().parse(new File(required(arg, "input-schema")));
    boolean project = mode.equals("project");
    if (!project && !mode.equals("pass")) {
      throw new IllegalArgumentException("mode is pass or project, not " + mode);
    }
    Schema output =
        project ? new Schema.Parser().parse(new File(required(arg, "output-schema"))) : input;
    int outputId = project ? Integer.parseInt(required(arg, "output-schema-id")) : -1;

    Properties props = new Properties();
    props.put(StreamsConfig.APPLICATION_ID_CONFIG, required(arg, "application-id"));
    props.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, required(arg, "bootstrap"));
    props.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, required(arg, "guarantee"));
    props.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, required(arg, "commit-interval-ms"));
    // As Switchyard's producers: every in-sync replica acknowledges.
    props.put(StreamsConfig.producerPrefix(ProducerConfig.ACKS_CONFIG), "all");
    props.put("consumer.auto.offset.reset", "earliest");
    if (arg.containsKey("linger-ms")) {
      props.put(StreamsConfig.producerPrefix(ProducerConfig.LINGER_MS_CONFIG), arg.get("linger-ms"));
    }

    Topology topology = new Topology();
    topology.addSource(
        "in",
        Serdes.String().deserializer(),
        Serdes.ByteArray().deserializer(),
        required(arg, "input"));
    topology.addProcessor("work", () -> new Work(input, output, outputId, project), "in");
    topology.addSink(
        "out",
        required(arg, "output"),
        Serdes.String().serializer(),
        Serdes.ByteArray().serializer(),
        "work");

    KafkaStreams streams = new KafkaStreams(topology, props);
    CountDownLatch stopped = new CountDownLatch(1);
    Runtime.getRuntime()
        .addShutdownHook(
            new Thread(
                () -> {
                  streams.close();
                  stopped.countDown();
                }));
    streams.start();
    stopped.await();
  }

  private static String required(Map<String, String> arg, String key) {
    String value = arg.get(key);
    if (value == null) {
      throw new IllegalArgumentException("missing " + key + "=...");
    }
    return value;
  }

  /** Decode, (project,) encode, forward. */
  static final class Work implements Processor<String, byte[], String, byte[]> {
    private final GenericDatumReader<GenericRecord> reader;
    private final GenericDatumWriter<GenericRecord> writer;
    private final Schema output;
    private final int outputId;
    private final boolean project;
    private final ByteArrayOutputStream buffer = new ByteArrayOutputStream(64);
    private BinaryDecoder decoder;
    private BinaryEncoder encoder;
    private ProcessorContext<String, byte[]> context;

    Work(Schema input, Schema output, int outputId, boolean project) {
      this.reader = new GenericDatumReader<>(input);
      this.writer = new GenericDatumWriter<>(output);
      this.output = output;
      this.outputId = outputId;
      this.project = project;
    }

    @Override
    public void init(ProcessorContext<String, byte[]> context) {
      this.context = context;
    }

    @Override
    public void process(Record<String, byte[]> record) {
      byte[] framed = record.value();
      if (framed == null || framed.length < 5 || framed[0] != 0) {
        return;
      }
      int writerId = ByteBuffer.wrap(framed, 1, 4).getInt();
      try {
        decoder = DecoderFactory.get().binaryDecoder(framed, 5, framed.length - 5, decoder);
        GenericRecord in = reader.read(null, decoder);
        GenericRecord out = in;
        int id = writerId;
        long time = record.timestamp();
        if (project) {
          Object value = in.get("value");
          if (value == null) {
            return;
          }
          out = new GenericData.Record(output);
          out.put("modem_id", in.get("modem_id"));
          out.put("device_id", in.get("device_id"));
          out.put("value", value);
          id = outputId;
          time = Math.floorDiv((Long) in.get("timestamp"), 1000L);
        }
        buffer.reset();
        buffer.write(0);
        buffer.write(ByteBuffer.allocate(4).putInt(id).array());
        encoder = EncoderFactory.get().binaryEncoder(buffer, encoder);
        writer.write(out, encoder);
        encoder.flush();
        context.forward(record.withValue(buffer.toByteArray()).withTimestamp(time));
      } catch (IOException e) {
        throw new IllegalStateException("undecodable record at " + record.timestamp(), e);
      }
    }
  }
}
