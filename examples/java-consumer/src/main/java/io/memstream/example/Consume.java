package io.memstream.example;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.DirectoryStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;

import org.apache.avro.Schema;
import org.apache.avro.SchemaNormalization;
import org.apache.avro.generic.GenericData;
import org.apache.avro.generic.GenericRecord;
import org.apache.avro.message.BinaryMessageDecoder;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.ConsumerRecords;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;

/**
 * Reads memstream's events from Kafka and decodes them with Apache Avro's own
 * {@link BinaryMessageDecoder}: memstream writes the Avro single-object encoding
 * (C3 01, the writer schema's CRC-64-AVRO fingerprint, the body), so no memstream code is
 * needed, only its schemas/ folder.
 *
 * <p>Usage: {@code Consume BOOTSTRAP TOPIC SCHEMAS_DIR [LIMIT] [IDLE_MS]}; one line per event:
 * {@code partition offset EventType {record as JSON}}.
 */
public final class Consume {
  private static final String[] SHARED = {"memstream.Scope", "memstream.Actor"};

  /** One decoder per event type: reader = the current schema, plus every older writer version. */
  private final Map<String, BinaryMessageDecoder<GenericRecord>> decoders = new HashMap<>();
  /** fingerprint (the 8 bytes after C3 01, little-endian) -> event type. */
  private final Map<Long, String> typeOf = new HashMap<>();

  private final Path root;

  Consume(Path schemas) throws IOException {
    root = schemas;
    for (Path file : avsc(schemas)) {
      Schema current = parse(file);
      BinaryMessageDecoder<GenericRecord> decoder =
          new BinaryMessageDecoder<>(GenericData.get(), current);
      decoders.put(current.getFullName(), decoder);
      typeOf.put(SchemaNormalization.parsingFingerprint64(current), current.getFullName());
    }
    for (Path file : avsc(schemas.resolve("history"))) {
      Schema older = parse(file);  // an earlier version: its messages resolve to the current one
      decoders.get(older.getFullName()).addSchema(older);
      typeOf.put(SchemaNormalization.parsingFingerprint64(older), older.getFullName());
    }
  }

  private static List<Path> avsc(Path dir) throws IOException {
    List<Path> out = new ArrayList<>();
    try (DirectoryStream<Path> files = Files.newDirectoryStream(dir, "*.avsc")) {
      for (Path f : files) {
        String name = f.getFileName().toString();
        if (!name.equals(SHARED[0] + ".avsc") && !name.equals(SHARED[1] + ".avsc")) {
          out.add(f);
        }
      }
    }
    out.sort(null);
    return out;
  }

  /** A record schema, parsed after the shared records it names (a fresh parser per file). */
  private Schema parse(Path file) throws IOException {
    Schema.Parser parser = new Schema.Parser();
    for (String shared : SHARED) {
      parser.parse(Files.readString(root.resolve(shared + ".avsc")));
    }
    return parser.parse(Files.readString(file));
  }

  String typeOf(byte[] message) {
    long fingerprint = ByteBuffer.wrap(message, 2, 8).order(ByteOrder.LITTLE_ENDIAN).getLong();
    String type = typeOf.get(fingerprint);
    if (type == null) {
      throw new IllegalStateException("unknown writer schema: newer memstream than these schemas");
    }
    return type;
  }

  GenericRecord decode(byte[] message) throws IOException {
    return decoders.get(typeOf(message)).decode(message);  // checks magic and fingerprint itself
  }

  public static void main(String[] args) throws Exception {
    if (args.length < 3) {
      System.err.println("usage: Consume BOOTSTRAP TOPIC SCHEMAS_DIR [LIMIT] [IDLE_MS]");
      System.exit(2);
    }
    Consume consume = new Consume(Path.of(args[2]));
    long limit = args.length > 3 ? Long.parseLong(args[3]) : Long.MAX_VALUE;
    long idleMs = args.length > 4 ? Long.parseLong(args[4]) : 5000;
    Properties props = new Properties();
    props.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, args[0]);
    props.put(ConsumerConfig.GROUP_ID_CONFIG, "memstream-example-java-consumer");
    props.put(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "earliest");
    props.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, "false");
    props.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class.getName());
    props.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class.getName());
    long seen = 0;
    try (KafkaConsumer<byte[], byte[]> consumer = new KafkaConsumer<>(props)) {
      consumer.subscribe(List.of(args[1]));
      long idleSince = System.currentTimeMillis();
      while (seen < limit && System.currentTimeMillis() - idleSince < idleMs) {
        ConsumerRecords<byte[], byte[]> records = consumer.poll(Duration.ofMillis(500));
        if (records.isEmpty()) {
          continue;
        }
        for (ConsumerRecord<byte[], byte[]> r : records) {
          GenericRecord event = consume.decode(r.value());
          System.out.println(r.partition() + " " + r.offset() + " "
              + event.getSchema().getName() + " " + event);
          seen++;
        }
        consumer.commitSync();  // after the events are handled: at-least-once
        idleSince = System.currentTimeMillis();
      }
    }
    System.err.println(seen + " events");
  }
}
