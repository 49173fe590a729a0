// Renders Ollama Modelfile templates the way Ollama does (template/template.go: Execute with
// .Messages present), for tests/test_export_ollama.py. Reads a JSON list of
// {"template": "...", "messages": [{"role", "content"}]} on stdin; writes a JSON list of strings.
package main

import (
	"bytes"
	"encoding/json"
	"os"
	"strings"
	"text/template"
)

type Message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

type Case struct {
	Template string    `json:"template"`
	Messages []Message `json:"messages"`
}

// collate is Ollama's: consecutive messages of one role merge, system messages also join into .System.
func collate(msgs []Message) (string, []*Message) {
	var system []string
	var collated []*Message
	for i := range msgs {
		msg := msgs[i]
		if msg.Role == "system" {
			system = append(system, msg.Content)
		}
		if len(collated) > 0 && collated[len(collated)-1].Role == msg.Role {
			collated[len(collated)-1].Content += "\n\n" + msg.Content
		} else {
			collated = append(collated, &msg)
		}
	}
	return strings.Join(system, "\n\n"), collated
}

func main() {
	var cases []Case
	if err := json.NewDecoder(os.Stdin).Decode(&cases); err != nil {
		panic(err)
	}
	out := make([]string, len(cases))
	for i, c := range cases {
		tmpl := template.Must(template.New("").Option("missingkey=zero").Parse(c.Template))
		system, messages := collate(c.Messages)
		var b bytes.Buffer
		data := map[string]any{"System": system, "Messages": messages, "Tools": nil, "Response": ""}
		if err := tmpl.Execute(&b, data); err != nil {
			panic(err)
		}
		out[i] = b.String()
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		panic(err)
	}
}
