// Produce and subscribe through a kafka-mesh sidecar from Java, with stubs generated from proto/ by the Maven
// protobuf plugin (see pom.xml).
//
//   java -jar target/kafka-mesh-example.jar HOST:PORT TOPIC COUNT [GROUP]
//
// Produces COUNT records (values java-<run>-<i>) and one record with an invalid topic name in one batch, prints each
// per-record error, then subscribes to TOPIC from the earliest offset, prints every record it reads as one JSON line
// ({"cluster", "topic", "partition", "offset", "key", "value"}), acks it and grants the credit back, and ends the
// stream (so the sidecar commits what was acked) once it has read every record it produced.
package kafkamesh.example;

import com.google.protobuf.ByteString;
import io.grpc.ManagedChannel;
import io.grpc.ManagedChannelBuilder;
import io.grpc.stub.StreamObserver;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.HashSet;
import java.util.List;
import java.util.Set;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;
import kafkamesh.api.v1.AckRange;
import kafkamesh.api.v1.Acks;
import kafkamesh.api.v1.ConsumedRecord;
import kafkamesh.api.v1.Credit;
import kafkamesh.api.v1.MeshGrpc;
import kafkamesh.api.v1.PartitionRecords;
import kafkamesh.api.v1.ProduceRequest;
import kafkamesh.api.v1.ProduceResponse;
import kafkamesh.api.v1.Record;
import kafkamesh.api.v1.RecordError;
import kafkamesh.api.v1.StartPosition;
import kafkamesh.api.v1.SubscribeRequest;
import kafkamesh.api.v1.SubscribeResponse;
import kafkamesh.api.v1.Subscription;

public final class MeshExample {
  public static void main(String[] args) throws Exception {
    if (args.length < 3) {
      System.err.println("usage: java -jar kafka-mesh-example.jar HOST:PORT TOPIC COUNT [GROUP]");
      System.exit(2);
    }
    String target = args[0];
    String topic = args[1];
    int count = Integer.parseInt(args[2]);
    String group = args.length > 3 ? args[3] : "java-example-" + ProcessHandle.current().pid();
    ManagedChannel channel = ManagedChannelBuilder.forTarget(target).usePlaintext().build();
    try {
      MeshGrpc.MeshStub mesh = MeshGrpc.newStub(channel);
      List<String> values = new ArrayList<>();
      ProduceRequest.Builder batch = ProduceRequest.newBuilder().setBatchId(1);
      for (int i = 0; i < count; i++) {
        values.add("java-" + ProcessHandle.current().pid() + "-" + i);
        batch.addRecords(Record.newBuilder().setTopic(topic).setKey(ByteString.copyFromUtf8("k" + i))
            .setValue(ByteString.copyFromUtf8(values.get(i))));
      }
      batch.addRecords(Record.newBuilder().setTopic("not a topic").setValue(ByteString.copyFromUtf8("refused")));
      ProduceResponse answer = produce(mesh, batch.build());
      System.err.printf("produced: %d ok, mapping revision %d%n", answer.getOkCount(), answer.getMappingRevision());
      for (RecordError e : answer.getErrorsList()) {
        System.err.printf("record %d: %s: %s%n", e.getIndex(), e.getCode(), e.getMessage());
      }
      if (answer.getOkCount() != count) {
        System.err.println("not every record was written");
        System.exit(1);
      }
      subscribe(mesh, group, topic, new HashSet<>(values));
    } finally {
      channel.shutdown().awaitTermination(10, TimeUnit.SECONDS);
    }
  }

  static ProduceResponse produce(MeshGrpc.MeshStub mesh, ProduceRequest batch) throws Exception {
    CompletableFuture<ProduceResponse> answer = new CompletableFuture<>();
    StreamObserver<ProduceRequest> requests = mesh.withDeadlineAfter(2, TimeUnit.MINUTES).produce(
        new StreamObserver<ProduceResponse>() {
          @Override public void onNext(ProduceResponse r) { answer.complete(r); }
          @Override public void onError(Throwable t) { answer.completeExceptionally(t); }
          @Override public void onCompleted() { answer.completeExceptionally(new IllegalStateException("no answer")); }
        });
    requests.onNext(batch);
    requests.onCompleted();
    return answer.get();
  }

  static void subscribe(MeshGrpc.MeshStub mesh, String group, String topic, Set<String> missing) throws Exception {
    CompletableFuture<Void> done = new CompletableFuture<>();
    StreamObserver<SubscribeRequest>[] out = new StreamObserver[1];
    boolean[] closed = {false};
    out[0] = mesh.withDeadlineAfter(2, TimeUnit.MINUTES).subscribe(new StreamObserver<SubscribeResponse>() {
      @Override public synchronized void onNext(SubscribeResponse r) {
        if (r.hasEvent()) {
          System.err.println("event " + r.getEvent().toString().replace('\n', ' '));
          return;
        }
        if (closed[0]) {
          return;        // sent before the sidecar saw the end: delivered again to the group later
        }
        Acks.Builder acks = Acks.newBuilder();
        int n = 0;
        for (PartitionRecords p : r.getRecords().getPartitionsList()) {
          for (ConsumedRecord c : p.getRecordsList()) {
            String value = c.hasValue() ? c.getValue().toString(StandardCharsets.UTF_8) : null;
            System.out.printf("{\"cluster\": %s, \"topic\": %s, \"partition\": %d, \"offset\": %d, \"key\": %s, "
                + "\"value\": %s}%n", quote(p.getCluster()), quote(p.getTopic()), p.getPartition(), c.getOffset(),
                c.hasKey() ? quote(c.getKey().toString(StandardCharsets.UTF_8)) : "null", quote(value));
            missing.remove(value);
            n++;
          }
          acks.addRanges(AckRange.newBuilder().setCluster(p.getCluster()).setTopic(p.getTopic())
              .setPartition(p.getPartition()).setFirstOffset(p.getRecords(0).getOffset())
              .setLastOffset(p.getRecords(p.getRecordsCount() - 1).getOffset()));
        }
        // The credit used is the records sent and the serialized size of the response that carried them.
        out[0].onNext(SubscribeRequest.newBuilder().setAcks(acks)
            .setCredit(Credit.newBuilder().setRecords(n).setBytes(r.getSerializedSize())).build());
        if (missing.isEmpty()) {
          closed[0] = true;
          out[0].onCompleted();    // the sidecar commits what was acked, then ends the call
        }
      }
      @Override public void onError(Throwable t) { done.completeExceptionally(t); }
      @Override public void onCompleted() { done.complete(null); }
    });
    out[0].onNext(SubscribeRequest.newBuilder().setSubscription(Subscription.newBuilder().setGroup(group)
        .addTopics(topic).setStart(StartPosition.START_POSITION_EARLIEST)
        .setCredit(Credit.newBuilder().setRecords(1000).setBytes(4 << 20))).build());
    done.get();
  }

  static String quote(String s) {
    if (s == null) {
      return "null";
    }
    StringBuilder b = new StringBuilder("\"");
    for (char c : s.toCharArray()) {
      if (c == '"' || c == '\\') {
        b.append('\\').append(c);
      } else if (c < 0x20) {
        b.append(String.format("\\u%04x", (int) c));
      } else {
        b.append(c);
      }
    }
    return b.append('"').toString();
  }
}
