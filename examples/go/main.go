// Produce and subscribe through a kafka-mesh sidecar from Go, with stubs generated from proto/ by protoc-gen-go and
// protoc-gen-go-grpc (buf generate --template examples/go/buf.gen.yaml).
//
//	go run . -target unix:/run/user/1000/kafka-mesh/sidecar.sock -topic orders -count 5
//
// Produces -count records (values go-<run>-<i>) and one record with an invalid topic name in one batch, prints each
// per-record error, then subscribes to -topic from the earliest offset, prints every record it reads as one JSON
// line ({"cluster", "topic", "partition", "offset", "key", "value"}), acks it and grants the credit back, and ends
// the stream (so the sidecar commits what was acked) once it has read every record it produced.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"

	meshv1 "kafkamesh/gen/kafkamesh/v1"
)

func main() {
	target := flag.String("target", "127.0.0.1:7420", "the sidecar: HOST:PORT or unix:PATH")
	topic := flag.String("topic", "orders", "the topic to produce to and read")
	count := flag.Int("count", 5, "records to produce")
	group := flag.String("group", fmt.Sprintf("go-example-%d", os.Getpid()), "the consumer group")
	flag.Parse()
	if err := run(*target, *topic, *count, *group); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}

func run(target, topic string, count int, group string) error {
	conn, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	client := meshv1.NewMeshClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	values := make([]string, count)
	records := make([]*meshv1.Record, 0, count+1)
	for i := range values {
		values[i] = fmt.Sprintf("go-%d-%d", os.Getpid(), i)
		records = append(records, &meshv1.Record{Topic: topic, Key: []byte(fmt.Sprintf("k%d", i)), Value: []byte(values[i])})
	}
	records = append(records, &meshv1.Record{Topic: "not a topic", Value: []byte("refused")}) // fails alone

	produce, err := client.Produce(ctx)
	if err != nil {
		return err
	}
	if err := produce.Send(&meshv1.ProduceRequest{BatchId: 1, Records: records}); err != nil {
		return err
	}
	if err := produce.CloseSend(); err != nil {
		return err
	}
	answer, err := produce.Recv()
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "produced: %d ok, mapping revision %d\n", answer.OkCount, answer.MappingRevision)
	for _, e := range answer.Errors {
		fmt.Fprintf(os.Stderr, "record %d: %s: %s\n", e.Index, e.Code, e.Message)
	}
	if int(answer.OkCount) != count {
		return fmt.Errorf("%d of %d records written", answer.OkCount, count)
	}
	return subscribe(ctx, client, group, topic, values)
}

type line struct {
	Cluster   string  `json:"cluster"`
	Topic     string  `json:"topic"`
	Partition int32   `json:"partition"`
	Offset    int64   `json:"offset"`
	Key       *string `json:"key"`
	Value     *string `json:"value"`
}

func text(b []byte) *string {
	if b == nil {
		return nil
	}
	s := string(b)
	return &s
}

func subscribe(ctx context.Context, client meshv1.MeshClient, group, topic string, values []string) error {
	stream, err := client.Subscribe(ctx)
	if err != nil {
		return err
	}
	err = stream.Send(&meshv1.SubscribeRequest{Subscription: &meshv1.Subscription{
		Group: group, Topics: []string{topic}, Start: meshv1.StartPosition_START_POSITION_EARLIEST,
		Credit: &meshv1.Credit{Records: 1000, Bytes: 4 << 20},
	}})
	if err != nil {
		return err
	}
	missing := map[string]bool{}
	for _, v := range values {
		missing[v] = true
	}
	out := json.NewEncoder(os.Stdout)
	closed := false
	for {
		resp, err := stream.Recv()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if event := resp.GetEvent(); event != nil {
			fmt.Fprintln(os.Stderr, "event", event)
			continue
		}
		batch := resp.GetRecords()
		if closed {
			continue // sent before the sidecar saw the end: delivered again to the group later
		}
		var ranges []*meshv1.AckRange
		var n uint32
		for _, p := range batch.Partitions {
			for _, r := range p.Records {
				if err := out.Encode(line{p.Cluster, p.Topic, p.Partition, r.Offset, text(r.Key), text(r.Value)}); err != nil {
					return err
				}
				delete(missing, string(r.Value))
				n++
			}
			ranges = append(ranges, &meshv1.AckRange{Cluster: p.Cluster, Topic: p.Topic, Partition: p.Partition,
				FirstOffset: p.Records[0].Offset, LastOffset: p.Records[len(p.Records)-1].Offset})
		}
		// The credit used is the records sent and the serialized size of the response that carried them.
		err = stream.Send(&meshv1.SubscribeRequest{Acks: &meshv1.Acks{Ranges: ranges},
			Credit: &meshv1.Credit{Records: n, Bytes: uint64(proto.Size(resp))}})
		if err != nil {
			return err
		}
		if len(missing) == 0 {
			closed = true
			// Ends the stream: the sidecar commits what was acked, then ends the call (Recv gives io.EOF).
			if err := stream.CloseSend(); err != nil {
				return err
			}
		}
	}
}
